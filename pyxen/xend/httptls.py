"""HTTPS for xend's TCP HTTP API: ``(xend-http-tls yes)`` and ``(xend-http-auth cert)``.

The server certificate is the host's (``pyxen.pki``: ``pyxen cert``); in
cert mode every client must show a certificate signed by the pool's CA
(``pyxen cert NAME --client``), checked during the handshake, so a refused
client never reaches the HTTP layer.

Why not aiohttp's ``TCPSite(ssl_context=...)``: asyncio drops a failed
handshake silently (an ``SSLError`` is an ``OSError``, logged only in
debug mode), and refusals must be logged with the peer and the reason.
So :class:`TlsSite` accepts plain TCP and does the handshake itself with
``loop.start_tls``, where a failure is an exception xend can see; only a
connection that completed it is given to aiohttp's request handler.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

from aiohttp import web

from ..pki import PkiError, TlsFiles
from .errors import XendError

log = logging.getLogger("pyxen.api")

HANDSHAKE_TIMEOUT = 10.0     # the default; xend uses its budget's (xend-preauth-timeout)


def context(cfg, etc: Path) -> ssl.SSLContext | None:
    """The TCP API's server context, or None when it is plain HTTP.  Missing
    or bad files are a XendError naming the file (xend does not start)."""
    cert_auth = cfg["xend-http-auth"] == "cert"
    if not (cert_auth or cfg["xend-http-tls"]):
        return None
    files = TlsFiles.for_host(etc, cfg["xend-http-ssl-cert-file"], cfg["xend-http-ssl-key-file"],
                              cfg["xend-http-ca-file"])
    try:
        return files.server_context(verify_clients=cert_auth)
    except PkiError as e:
        raise XendError(f"HTTPS API ({'xend-http-auth cert' if cert_auth else 'xend-http-tls'}): {e}") from None


def refusal(e: BaseException, timeout: float = HANDSHAKE_TIMEOUT) -> str:
    """Why a handshake failed, in words."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"client certificate not trusted: {e.verify_message}"
    reason = getattr(e, "reason", None) or ""
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "no client certificate"
    if reason == "HTTP_REQUEST":
        return "plain HTTP on the HTTPS port"
    if reason in ("WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"):
        return f"not a TLS 1.3 client ({reason})"
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return f"no TLS handshake within {timeout:.0f} s"
    if isinstance(e, (ConnectionError, EOFError)):
        return "connection closed during the TLS handshake"
    return f"TLS handshake failed: {reason or e}"


class _Early(asyncio.Protocol):
    """Holds what arrives between the end of the handshake and the moment
    aiohttp's handler is connected (TLS may deliver the first request in
    the same read as the client's Finished)."""

    def __init__(self):
        self.data: list[bytes] = []
        self.eof = False
        self.lost: tuple | None = None

    def data_received(self, data):
        self.data.append(data)

    def eof_received(self):
        self.eof = True
        return True     # keep the transport open for the reply to a pipelined request

    def connection_lost(self, exc):
        self.lost = (exc,)


class _Handshake(asyncio.Protocol):
    """The protocol of an accepted TCP connection until TLS is up."""

    def __init__(self, site: "TlsSite"):
        self.site = site

    def connection_made(self, transport):
        # A stranger until the handshake (and, with a token, a request) says
        # otherwise: admitted by the pre-authentication budget or closed.
        peer = transport.get_extra_info("peername")
        ticket = self.site._guard.budget.admit(
            str(peer[0]).removeprefix("::ffff:") if isinstance(peer, tuple) else "?")
        if ticket is None:
            transport.abort()
            return
        # Nothing may be read before the TLS layer is in place.
        transport.pause_reading()
        t = asyncio.get_running_loop().create_task(self.site._handshake(transport, ticket))
        self.site._pending.add(t)
        t.add_done_callback(self.site._pending.discard)

    def data_received(self, data):   # pragma: no cover - reading is paused until start_tls
        pass


class TlsSite(web.TCPSite):
    """aiohttp's TCP site, with the TLS handshake done (and its failures logged) here."""

    def __init__(self, runner, host, port, ctx: ssl.SSLContext, guard):
        super().__init__(runner, host, port)
        self._tls = ctx
        self._guard = guard         # httpguard.Guard: the pre-authentication budget
        self._pending: set[asyncio.Task] = set()

    @property
    def name(self) -> str:
        return super().name.replace("http://", "https://", 1)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Handshake(self), self._host, self._port,
                                                backlog=self._backlog, reuse_address=self._reuse_address,
                                                reuse_port=self._reuse_port)

    async def stop(self) -> None:
        for t in list(self._pending):
            t.cancel()
        await super().stop()

    async def _handshake(self, transport, ticket) -> None:
        early = _Early()
        loop = asyncio.get_running_loop()
        budget = self._guard.budget
        try:
            tls = await loop.start_tls(transport, early, self._tls, server_side=True,
                                       ssl_handshake_timeout=budget.deadline)
        except asyncio.CancelledError:
            ticket.release()
            transport.abort()
            raise
        except Exception as e:      # SSLError, timeouts, resets: all refusals (logged rate-limited)
            ticket.release()
            budget.refuse(ticket.peer, refusal(e, budget.deadline))
            transport.abort()
            return
        handler = self._guard.protocol(self._runner.server(), ticket)
        tls.set_protocol(handler)
        handler.connection_made(tls)
        if early.data:
            handler.data_received(b"".join(early.data))
        if early.eof:
            handler.eof_received()
        if early.lost is not None:
            handler.connection_lost(*early.lost)
