"""xend's web console: the static page, browser sessions, uploaded configs
and the VNC websocket proxy.

The page (``pyxen/web/static``) is plain HTML/JS; its front-end libraries
(xterm.js, noVNC) are bundled by ``make web`` into ``static/vendor`` so that
nothing is fetched at run time.  Browsers cannot put a bearer token on an
EventSource or a WebSocket, so the page trades the token for a session
cookie (``POST /api/login``: HttpOnly, SameSite=Strict) that the API's auth
middleware accepts like the token.

Uploaded configs are SXP ``(vm ...)`` or xl.cfg ``KEY=VALUE`` files.  xend
never evaluates Python: an xm config that needs Python is refused with a
message pointing at ``xm create``, which evaluates it on the client side.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path, PurePosixPath

from aiohttp import WSMsgType, web

from ..config import sxp, xmconfig
from ..config.domain import DomainConfig
from ..config.errors import ConfigError
from ..ops.table import OPS
from .errors import Conflict, InvalidRequest

log = logging.getLogger("pyxen.api")

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
COOKIE = "xend_session"
SESSION_TTL = 12 * 3600


class Sessions:
    """Browser sessions: random ids held in memory (a restart logs browsers out)."""

    def __init__(self, ttl: float = SESSION_TTL):
        self.ttl = ttl
        self._expiry: dict[str, float] = {}

    def new(self) -> str:
        self._purge()
        sid = secrets.token_urlsafe(32)
        self._expiry[sid] = time.monotonic() + self.ttl
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        exp = self._expiry.get(sid)
        if exp is None or exp < time.monotonic():
            self._expiry.pop(sid, None)
            return False
        return True

    def drop(self, sid: str | None) -> None:
        self._expiry.pop(sid or "", None)

    def _purge(self) -> None:
        now = time.monotonic()
        for sid in [s for s, e in self._expiry.items() if e < now]:
            del self._expiry[sid]


# The operation table's public routes: the page's own files and the login call.
_PUBLIC = [(o.method, o.path) for o in OPS if o.public]


def is_public(request: web.Request) -> bool:
    """The page's own files and the login call need no credentials: they hold no secrets."""
    for method, path in _PUBLIC:
        # A path ending in "/" (other than the root) is a prefix: the static files.
        hit = request.path.startswith(path) if path.endswith("/") and path != "/" else request.path == path
        if hit and (request.method == method or (method == "GET" and request.method == "HEAD")):
            return True
    return False


def same_origin(request: web.Request) -> bool:
    """A cookie-authenticated request must not come from another site's page (CSRF)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    from urllib.parse import urlsplit
    return urlsplit(origin).netloc == request.host


# ------------------------------------------------------------------ uploads
CONFIG_SUFFIXES = (".cfg", ".sxp", ".conf")


def config_from_upload(text: str, filename: str) -> tuple[DomainConfig, list[str]]:
    """An uploaded config file (SXP or xl.cfg syntax) as a DomainConfig, and its notes."""
    filename = PurePosixPath(filename or "upload").name or "upload"
    if not text.strip():
        raise InvalidRequest(f"{filename}: the config file is empty")
    if text.lstrip().startswith("("):
        try:
            return DomainConfig.from_sxp(sxp.from_string(text)), []
        except (ConfigError, sxp.SxpError) as e:
            raise InvalidRequest(f"{filename}: invalid SXP domain config: {e}") from None
    try:
        values = xmconfig.parse_xl(text, filename)
    except ConfigError as e:
        raise InvalidRequest(f"{e}; xend reads SXP (vm ...) or xl.cfg KEY=VALUE configs and never "
                             "runs Python: create this one with 'xm create' on the host") from None
    if not values.get("name"):
        stem = filename
        for suf in CONFIG_SUFFIXES:
            if stem.endswith(suf) and len(stem) > len(suf):
                stem = stem[:-len(suf)]
                break
        values["name"] = stem
    try:
        cfg = DomainConfig.from_values(values)
    except ConfigError as e:
        raise InvalidRequest(f"{filename}: {e}") from None
    return cfg, xmconfig.notes_for(values, set())


# ----------------------------------------------------------------- handlers
class Web:
    """The page's state: browser sessions.  Its routes are in the operation
    table (pyxen.ops.table), served by the functions below."""

    def __init__(self, api):
        self.api = api
        self.sessions = Sessions()
        if not (STATIC / "vendor" / "xterm.js").exists():
            log.warning("web console bundles missing in %s: run 'make web'", STATIC / "vendor")


async def index(call):
    raise web.HTTPFound("/ui/index.html")


async def login(call):
    api, request = call.api, call.request
    if not api.token_ok(call.args["token"]):
        peer = request.transport.get_extra_info("peername") if request.transport else None
        log.warning("refused login from %s: bad token", peer[0] if isinstance(peer, tuple) else "local")
        return web.json_response({"error": "wrong token", "code": "unauthorized"}, status=401)
    resp = web.json_response({"ok": True})
    resp.set_cookie(COOKIE, api.web.sessions.new(), max_age=SESSION_TTL, path="/",
                    httponly=True, samesite="Strict", secure=request.secure)
    return resp


async def logout(call):
    call.api.web.sessions.drop(call.request.cookies.get(COOKIE))
    resp = web.json_response({"ok": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


async def create_from_file(call):
    cfg, notes = config_from_upload(call.args["file"], call.args["filename"] or "upload")
    dom = await call.api.domains.create_config(cfg, paused=call.args["paused"])
    for n in notes:
        log.info("%s: %s", dom.name, n)
    return {"domid": dom.domid, "name": dom.name, "uuid": dom.uuid, "notes": notes}


async def vnc(call):
    """A websocket carrying the domain's VNC (RFB) stream, for noVNC.

    A domain offers its display through ``vnc_address()`` (a Unix socket
    path or a (host, port) pair, or None); PV domains have none.
    """
    request, ref = call.request, call.request.match_info["dom"]
    if call.api.is_dom0(ref):
        raise InvalidRequest("Domain-0 has no VNC display here")
    dom = call.api.domains.lookup(ref)
    getter = getattr(dom, "vnc_address", None)
    addr = getter() if callable(getter) else None
    if addr is None:
        raise Conflict(f"Domain {dom.name} has no VNC display (only HVM guests have a screen)")
    ws = web.WebSocketResponse(protocols=("binary",), heartbeat=30)
    if not ws.can_prepare(request).ok:     # a plain GET asks whether there is a display
        info = {"name": dom.name, "display": "vnc", "websocket": request.path}
        tcp = getattr(dom, "vnc_display", lambda: None)()
        if tcp is not None:     # the domain's own VNC server, for a VNC viewer
            info.update(host=tcp[0], port=tcp[1], vncdisplay=tcp[1] - 5900)
        return web.json_response(info)
    return await relay_vnc(request, ws, addr)


async def relay_vnc(request, ws: web.WebSocketResponse, addr) -> web.WebSocketResponse:
    """Pump bytes between a websocket and a VNC server until either side ends."""
    try:
        if isinstance(addr, (str, Path)):
            reader, writer = await asyncio.open_unix_connection(str(addr))
        else:
            reader, writer = await asyncio.open_connection(*addr)
    except OSError as e:
        raise Conflict(f"the VNC display is not reachable: {e.strerror or e}") from None
    await ws.prepare(request)

    async def upstream():
        while data := await reader.read(65536):
            await ws.send_bytes(data)
        await ws.close()        # the display went away: end the browser's session too

    pump = asyncio.ensure_future(upstream())
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                writer.write(msg.data)
                await writer.drain()
            elif msg.type == WSMsgType.ERROR:
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        pump.cancel()
        writer.close()
        await ws.close()
    return ws
