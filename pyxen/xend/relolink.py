"""The relocation connection: the source's TCP and TLS connection to a
relocation server (another host's, or over loopback this xend's own: see
twins.Loopback), the errors it reports in one line, and the socket helpers
both ends of a migration share (migration.py, relocation.py,
remotecreate.py)."""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl

from ..pki import PkiError, TlsFiles
from . import relocproto as rp
from . import twins
from .errors import Conflict

CONNECT_TIMEOUT = 30.0      # Xen's relocation connect timeout
LINK_TIMEOUT = 60.0         # the longest silence of a live peer
# The socketpairs between xend and QEMU: whatever sits in them when the
# guest stops must still cross the link and be loaded before it resumes.
# 4 MiB buffers made the idle downtime ~60 ms (median of 8-10
# migrations, bench/migrate.py's harness), 1 MiB ~30-47 ms with the same
# stream throughput; 256 KiB halved the throughput.
SOCKBUF = 1 << 20


class MigrationError(Conflict):
    """A migration that did not happen; the message says where the domain
    is.  (409: the request was fine, the hosts' state did not allow it.)"""
    code = "migration_failed"


async def run_blocking(fn, *args):
    """*fn* in a worker thread (socket and TLS work blocks)."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


def socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, SOCKBUF)
            except OSError:
                pass
    return a, b


def tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt, val in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)


def tls_files(config, paths) -> TlsFiles:
    c = config
    return TlsFiles.for_host(paths.etc, c["xend-relocation-server-ssl-cert-file"],
                             c["xend-relocation-server-ssl-key-file"], c["xend-relocation-ca-file"])


# ===================================================================== source
def _connect(host: str, port: int, ctx: ssl.SSLContext | None, own: bytes | None = None) -> rp.Link:
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except socket.timeout:
        raise MigrationError(f"cannot connect to {host}:{port}: no answer in {CONNECT_TIMEOUT:.0f} s") from None
    except OSError as e:
        err = MigrationError(f"cannot connect to {host}:{port}: {e.strerror or e} "
                             "(is xend-relocation-server on there?)")
        err.why = "refused" if isinstance(e, ConnectionRefusedError) else ""
        raise err from None
    tune(sock)
    if ctx is not None:
        try:
            sock = ctx.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as e:
            sock.close()
            err = MigrationError(f"{host}:{port} is not a trusted pyxen host: {e.verify_message}")
            err.why = "name" if e.verify_code == twins.X509_V_ERR_HOSTNAME_MISMATCH else ""
            raise err from None
        except (ssl.SSLError, OSError) as e:
            sock.close()
            raise MigrationError(f"TLS with {host}:{port} failed: {_tls_reason(e)}") from None
        if own is not None and sock.getpeercert(binary_form=True) != own:
            sock.close()
            raise MigrationError(f"{host}:{port} is a loopback address but its xend is not this host's "
                                 "(another certificate)")
    return rp.Link(sock, LINK_TIMEOUT)


def _connect_loopback(host: str, port: int, ctx: ssl.SSLContext | None, here: "twins.Loopback") -> rp.Link:
    """*host* is a loopback name.  Whoever listens there is the target
    (another xend of this machine, too); but this xend's own relocation
    server may listen on its address only, and no host certificate names
    ``localhost``: then this xend is reached (twins.Loopback)."""
    try:
        return _connect(host, port, ctx)
    except MigrationError as e:
        why = getattr(e, "why", "")
        if why == "refused" and here.listen:
            return _connect(here.listen, port, ctx)
        if why == "name" and here.ctx is not None:
            return _connect(host, port, here.ctx, here.own)
        raise


def client_context(config, paths, what: str) -> ssl.SSLContext | None:
    """The TLS context this host connects to another's relocation server
    with (None with ``(xend-relocation-tls no)``); a missing certificate
    is a MigrationError starting with *what*."""
    if not config["xend-relocation-tls"]:
        return None
    try:
        return tls_files(config, paths).client_context()
    except PkiError as e:
        raise MigrationError(f"{what}: {e}") from None


def _tls_reason(e: Exception) -> str:
    text = getattr(e, "reason", None) or str(e)
    if "WRONG_VERSION_NUMBER" in str(text) or "record layer failure" in str(text):
        return "the peer does not speak TLS (is its xend-relocation-tls off?)"
    if "alert" in str(text).lower() or "UNKNOWN_CA" in str(text):
        return f"the peer refused our certificate ({text})"
    if isinstance(e, ConnectionResetError) or "EOF" in str(text):
        return "the peer closed the connection during the handshake (it refused us: see its xend.log)"
    return str(text)
