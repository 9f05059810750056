"""The HTTP API's TCP connections, held to the pre-authentication budget.

aiohttp reads request headers without a deadline and bodies up to the
app's ``client_max_size`` (16 MiB, for config uploads) before any handler
-- the authentication middleware included -- runs, so a peer with no
credentials could hold descriptors forever with half-sent headers, or
make ``/api/login`` buffer 16 MiB per connection.  Here every TCP
connection gets a ticket from a :class:`preauth.Budget` when it is
accepted (none left: closed at once), and then:

* its request headers must be complete within the budget's deadline of
  the connection opening or of its previous response;
* a request that does not (yet) prove who sent it -- the public login
  call and web page -- may carry at most ``max_body`` bytes, with a
  Content-Length, read within the deadline (413 / 411 / 408 otherwise);
* the first request the API's auth lets through (not 401/403, not a
  public path) makes the connection trusted: its ticket goes back and no
  deadline applies any more (an event stream or a VNC session may last).

It also puts the web UI's framing and content policy headers on every
response (the page is not to be framed by another site).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from . import preauth
from . import web as webui

log = logging.getLogger("pyxen.api")

__all__ = ["Guard", "GuardedSite", "security_headers"]

# The page loads its own scripts and styles only; xterm.js adds <style>
# elements, hence 'unsafe-inline' for styles (not for scripts).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")


async def security_headers(request, response) -> None:
    """on_response_prepare: no framing by other sites, a strict CSP."""
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")


def _peer_of(transport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]).removeprefix("::ffff:") if isinstance(peer, tuple) else "?"


class _Conn:
    """What the guard knows of one TCP connection."""

    def __init__(self, guard: "Guard", ticket: preauth.Ticket, transport):
        self.guard, self.ticket, self.transport = guard, ticket, transport
        self.trusted = False
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, why: str) -> None:
        self.disarm()
        if not self.trusted:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.guard.budget.deadline, self._expire, why)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, why: str) -> None:
        self._timer = None
        self.guard.budget.refuse(self.ticket.peer, f"{why} within {self.guard.budget.deadline:.0f} s")
        self.transport.abort()

    def trust(self) -> None:
        self.trusted = True
        self.disarm()
        self.ticket.release()

    def closed(self) -> None:
        self.disarm()
        self.ticket.release()


class _Guarded(asyncio.Protocol):
    """aiohttp's request handler, with the guard told of each connection's
    start and end (everything else is passed straight through)."""

    def __init__(self, guard: "Guard", inner, ticket: preauth.Ticket | None = None):
        self.guard, self.inner, self.ticket = guard, inner, ticket

    def connection_made(self, transport):
        ticket = self.ticket or self.guard.budget.admit(_peer_of(transport))
        if ticket is None:
            transport.abort()
            return
        conn = _Conn(self.guard, ticket, transport)
        self.guard.conns[self.inner] = conn
        if self.guard.trust_all:
            conn.trust()        # (xend-http-auth cert): the TLS handshake authenticated it
        else:
            conn.arm("no complete request headers")
        self.inner.connection_made(transport)

    def connection_lost(self, exc):
        conn = self.guard.conns.pop(self.inner, None)
        if conn is None:
            return              # refused in connection_made: aiohttp never saw it
        conn.closed()
        self.inner.connection_lost(exc)

    def data_received(self, data):
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self):
        self.inner.pause_writing()

    def resume_writing(self):
        self.inner.resume_writing()


class Guard:
    """The budget of the TCP API and the middleware that applies it per request."""

    def __init__(self, budget: preauth.Budget, trust_all: bool = False):
        self.budget = budget
        self.trust_all = trust_all
        self.conns: dict = {}

    def protocol(self, inner, ticket: preauth.Ticket | None = None) -> asyncio.Protocol:
        return _Guarded(self, inner, ticket)

    @web.middleware
    async def middleware(self, request, handler):
        conn = self.conns.get(request.protocol)
        if conn is None or conn.trusted:
            return await handler(request)       # the Unix socket (root), or authenticated
        conn.disarm()
        try:
            # Only the public calls read a body before authentication (the
            # API's auth refuses any other request before its body is read).
            if webui.is_public(request) and request.can_read_body:
                refusal = await self._read_small_body(request)
                if refusal is not None:
                    return refusal
            resp = await handler(request)
        except BaseException:
            conn.arm("no next request")
            raise
        if resp.status not in (401, 403) and not webui.is_public(request):
            conn.trust()
        else:
            conn.arm("no next request")
        return resp

    async def _read_small_body(self, request):
        limit = self.budget.max_body
        peer = _peer_of(request.transport)
        if request.content_length is None:
            self.budget.refuse(peer, "request body without Content-Length before authentication")
            return web.json_response({"error": "Content-Length required", "code": "invalid"}, status=411)
        if request.content_length > limit:
            self.budget.refuse(peer, f"{request.content_length}-byte body before authentication")
            return web.json_response({"error": f"request body larger than {limit} bytes before "
                                               "authentication", "code": "invalid"}, status=413)
        try:
            # Read (and cached for the handler) under the deadline.
            await asyncio.wait_for(request.read(), self.budget.deadline)
        except asyncio.TimeoutError:
            self.budget.refuse(peer, f"request body not sent within {self.budget.deadline:.0f} s")
            return web.json_response({"error": "request body timeout", "code": "invalid"}, status=408,
                                     headers={"Connection": "close"})
        return None


class GuardedSite(web.TCPSite):
    """aiohttp's plain TCP site with every connection under the guard."""

    def __init__(self, runner, host, port, guard: Guard):
        super().__init__(runner, host, port)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: self._guard.protocol(self._runner.server()),
                                                self._host, self._port, backlog=self._backlog,
                                                reuse_address=self._reuse_address, reuse_port=self._reuse_port)
