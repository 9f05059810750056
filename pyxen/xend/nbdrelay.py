"""The NBD channel of a storage migration: QEMU's NBD traffic between the
source's mirror and the target's export, carried inside a TLS connection
with the relocation server's certificates and peer checks (never a plain
NBD port anyone could reach).

Each NBD connection QEMU opens on the source (one per disk) becomes one
extra connection to the target's relocation port, checked like the
migration's own (hosts-allow, a host certificate of the pool's CA), whose
first control message names the migration by a random token the target
handed out on the authenticated main connection::

    S: (nbd (version 1) (token HEX))
    T: (ok nbd)                      or (err (type T) (value MESSAGE))
    then raw NBD bytes both ways, until either end closes

NBD is full duplex, which a blocking SSL socket shared by two threads
cannot do safely (OpenSSL forbids concurrent reads and writes on one
connection), so :func:`relay` moves both directions in one thread over
non-blocking sockets.  Relays run in their own threads, not asyncio's
executor: they live as long as the mirror and would starve it.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
from pathlib import Path

from . import relocproto as rp

log = logging.getLogger("pyxen.domain.migrate")

CHUNK = 1 << 20             # one direction's buffer (mirror requests are up to 1 MiB)
TICK = 0.5                  # how often a relay looks at its stop flag

_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)


class _Direction:
    """One way of a relay: a buffer filled from *src* only once it has all
    gone to *dst*, so an SSL write that would block is retried with exactly
    the same bytes (OpenSSL's rule) and nothing is copied twice."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.buf = bytearray(CHUNK)
        self.mv = memoryview(self.buf)
        self.start = self.end = 0
        self.eof = False
        self.wait_r = self.wait_w = False
        self.broken = False
        self.moved = 0

    @property
    def done(self) -> bool:
        return self.broken or (self.eof and self.start == self.end)

    def pump(self) -> bool:
        """Move what can move now; whether anything did."""
        progress = False
        self.wait_r = self.wait_w = False
        while not self.broken:
            if self.start == self.end and not self.eof:
                self.start = self.end = 0
                try:
                    while self.end < CHUNK:
                        n = self.src.recv_into(self.mv[self.end:])
                        if not n:
                            self.eof = True
                            break
                        self.end += n
                        progress = True
                        # An SSL read returns one record: go on while it has more.
                        if not (isinstance(self.src, ssl.SSLSocket) and self.src.pending()):
                            break
                except _WOULD_BLOCK:
                    pass
                except OSError:
                    self.broken = True
                    return progress
                if self.start == self.end:
                    self.wait_r = not self.eof
                    return progress
            if self.start == self.end:
                return progress
            try:
                n = self.dst.send(self.mv[self.start:self.end])
            except _WOULD_BLOCK:
                self.wait_w = True
                return progress
            except OSError:
                self.broken = True
                return progress
            self.start += n
            self.moved += n
            progress = True
            if self.start < self.end:       # a plain socket's short write
                self.wait_w = True
                return progress


def relay(a: socket.socket, b: socket.socket, stop: threading.Event | None = None) -> int:
    """Copy bytes both ways between *a* and *b* until one end closes (and
    what it sent is delivered), a connection breaks, or *stop* is set.
    Returns the bytes moved both ways.  Either may be an SSLSocket."""
    for s in (a, b):
        s.setblocking(False)
    ways = (_Direction(a, b), _Direction(b, a))
    while stop is None or not stop.is_set():
        progress = False
        for w in ways:
            progress |= w.pump()
        if any(w.done for w in ways):
            break
        if progress:
            continue
        rl = [w.src for w in ways if w.wait_r]
        wl = [w.dst for w in ways if w.wait_w]
        try:
            select.select(rl, wl, [], TICK)
        except (OSError, ValueError):
            break
    return sum(w.moved for w in ways)


async def in_thread(fn, *args):
    """*fn* in a thread of its own (not the executor a long relay would
    starve); its result or exception, awaited."""
    import asyncio
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def run():
        try:
            res = fn(*args)
        except BaseException as e:
            # Bound now: Python unbinds e when the except block ends, before
            # the loop runs the callback.
            loop.call_soon_threadsafe(lambda exc=e: fut.done() or fut.set_exception(exc))
        else:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(res))
    threading.Thread(target=run, name=f"nbd-{getattr(fn, '__name__', 'x')}", daemon=True).start()
    return await fut


def close_all(*socks) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


class Relays:
    """The threads of one migration's NBD relays, stopped together."""

    def __init__(self, name: str):
        self.name = name
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        self.moved = 0

    def start(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, name=f"nbd-{self.name}", daemon=True)
        self.threads.append(t)
        t.start()

    def hold(self, *socks) -> None:
        with self.lock:
            self.socks.extend(socks)

    def run(self, a, b) -> None:
        self.hold(a, b)
        try:
            n = relay(a, b, self.stop)
            with self.lock:
                self.moved += n
        finally:
            close_all(a, b)

    def close(self, timeout: float = 2.0) -> None:
        """Stop every relay (QEMU's NBD clients see their connection end)."""
        self.stop.set()
        with self.lock:
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(timeout)


# --------------------------------------------------------------- source
class SourceChannel:
    """A Unix socket in the domain's run dir for the source QEMU's NBD
    clients; each connection is relayed to the target over TLS."""

    def __init__(self, path: Path, connect, token: str, name: str, owner: tuple[int, int] | None = None):
        # *connect*: () -> a connected relocproto.Link (TLS, peer checked).
        # *owner*: the (uid, gid) of a confined QEMU, which must connect.
        self.path, self.connect, self.token = path, connect, token
        self.relays = Relays(name)
        self.errors: list[str] = []
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        os.chmod(path, 0o600)
        if owner is not None:
            os.chown(path, *owner)
        self.listener.listen(8)
        self.listener.settimeout(TICK)
        self.relays.start(self._accept)

    def _accept(self) -> None:
        while not self.relays.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.relays.start(self._one, conn)

    def _one(self, conn: socket.socket) -> None:
        self.relays.hold(conn)
        try:
            link = self.connect()
            self.relays.hold(link.sock)
            link.request(["nbd", ["version", 1], ["token", self.token]], "nbd")
        except Exception as e:
            self.errors.append(f"the NBD channel to the target failed: {e}")
            log.error("%s: %s", self.relays.name, self.errors[-1])
            close_all(conn)
            return
        link.sock.settimeout(None)
        self.relays.run(conn, link.sock)

    def close(self) -> None:
        close_all(self.listener)
        self.relays.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


# --------------------------------------------------------------- target
# Token -> (the peer's address, the target QEMU's NBD socket, its Relays):
# the migrations this relocation server currently exports disks for.
_EXPORTS: dict[str, tuple[str, str, Relays]] = {}


def register(token: str, peer: str, nbd_path: str, relays: Relays) -> None:
    _EXPORTS[token] = (peer, nbd_path, relays)


def unregister(token: str) -> None:
    _EXPORTS.pop(token, None)


def serve(link: rp.Link, first: list, peer: str) -> None:
    """The target's end of one NBD connection (a relocation connection
    whose first message is (nbd ...)); blocking, in its own thread."""
    from ..config import sxp
    token = str(sxp.child_value(first, "token", ""))
    entry = _EXPORTS.get(token) if token else None
    if entry is None or entry[0] != peer:
        link.send(rp.err("nbd", "no storage migration from this host is waiting for that token"))
        link.close()
        log.warning("relocation: NBD connection from %s with an unknown token refused", peer)
        return
    _, nbd_path, relays = entry
    qemu = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        qemu.connect(nbd_path)
    except OSError as e:
        close_all(qemu)
        link.send(rp.err("nbd", f"the target QEMU's NBD server is not there ({e.strerror or e})"))
        link.close()
        return
    link.send(rp.ok("nbd"))
    link.sock.settimeout(None)
    relays.run(link.sock, qemu)
