"""xend's API: JSON resources over HTTP (aiohttp), on the Unix socket.

The routes are generated from the operation table (``pyxen.ops.table``):
each entry's handler is resolved when the application is built, its
parameters are validated by ``pyxen.ops.validate`` (the checks xm runs
before sending), and a XendError becomes a JSON error with its status.
Handlers live in ``pyxen.xend.handlers`` (and the page's in ``web``); they
call the one implementation of each operation (``Domains``/``Domain``).
xm is a client of exactly this API.
"""

from __future__ import annotations

import hmac
import logging
import os
import time

from aiohttp import web

from ..ops import validate as opcheck
from ..ops.table import OPS, Op
from ..pki import subject_cn
from . import host
from . import web as webui
from ..store import StoreError
from .domains import Domains
from .durable import StateNotSaved
from .errors import InvalidRequest, XendError
from .handlers import Call, resolve

log = logging.getLogger("pyxen.api")
START_TIME = time.time()


def _json_error(e: XendError) -> web.Response:
    return web.json_response({"error": str(e), "code": e.code}, status=e.status)


@web.middleware
async def errors(request, handler):
    try:
        return await handler(request)
    except XendError as e:
        if e.status >= 500:
            log.error("%s %s: %s", request.method, request.path, e)
        return _json_error(e)
    except StoreError as e:
        # A state write no operation caught (every domain operation goes
        # through durable.change): still one line, with the store's reason.
        log.error("%s %s: %s", request.method, request.path, e)
        return _json_error(StateNotSaved(str(e)))
    except web.HTTPException:
        raise
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return _json_error(XendError(f"internal error: {type(e).__name__}: {e}"))


class Api:
    def __init__(self, domains: Domains, log_path, ring=None, token: str | None = None,
                 client_certs: bool = False):
        self.domains = domains
        self.log_path = log_path
        self.ring = ring
        self.token = token          # required on TCP connections when set
        # (xend-http-auth cert): TCP connections arrive through TLS that
        # verified a client certificate (httptls); checked again per request.
        self.client_certs = client_certs
        self.qemu_version = None    # asked once, on the first xm info
        self.web = webui.Web(self)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth, errors], client_max_size=16 * 1024 * 1024)
        for op in OPS:      # in table order: named operations before the catch-all
            if op.handler == "static":
                app.router.add_static(op.path, webui.STATIC, follow_symlinks=False, append_version=False)
            else:
                app.router.add_route(op.method, op.path, self.endpoint(op, resolve(op.handler)))
        return app

    def endpoint(self, op: Op, fn):
        """The aiohttp handler for *op*: validate, find the domain, run *fn*."""
        async def handle(request):
            body = await self.body(request) if op.method in ("POST", "PUT") else {}
            try:
                args = opcheck.validate(op, body, request.query)
            except opcheck.OpError as e:
                raise InvalidRequest(str(e)) from None
            dom = None
            if op.domain:
                ref = request.match_info["dom"]
                if self.is_dom0(ref):
                    verb = request.match_info.get("op", op.verb)
                    # "cannot be paused", but an op without a participle: "does not support pci-attach".
                    raise InvalidRequest(f"Domain 0 cannot be {verb}" if verb.endswith("ed") or verb == "shutdown"
                                         else f"Domain 0 does not support {verb}")
                dom = self.domains.lookup(ref)
            res = await fn(Call(self, request, op, args, dom))
            if isinstance(res, web.StreamResponse):
                return res
            return web.json_response(res, status=op.status)
        handle.__name__ = f"op_{op.name.replace('-', '_')}"
        return handle

    # ------------------------------------------------------------------ auth
    @web.middleware
    async def auth(self, request, handler):
        """Unix-socket clients are root (the socket is 0600); TCP needs the token,
        or the session cookie a browser got for it from POST /api/login."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if isinstance(peer, tuple) and self.client_certs:
            cert = request.transport.get_extra_info("peercert")
            if not cert:
                log.warning("refused %s %s from %s: no client certificate", request.method, request.path, peer[0])
                return web.json_response({"error": "client certificate required", "code": "unauthorized"},
                                         status=401)
            if request.method != "GET":     # who changed what, for the log
                log.info("%s %s from %s (client certificate %s)", request.method, request.path, peer[0],
                         subject_cn(cert))
        elif isinstance(peer, tuple) and self.token is not None and not webui.is_public(request):
            got = request.headers.get("Authorization", "")
            sid = request.cookies.get(webui.COOKIE)
            if got:
                ok, why = self.token_ok(got.removeprefix("Bearer ")) and got.startswith("Bearer "), "bad token"
            elif sid:
                ok, why = self.web.sessions.valid(sid), "unknown or expired session"
                if ok and not webui.same_origin(request):
                    ok, why = False, f"session cookie from foreign origin {request.headers.get('Origin')}"
            else:
                ok, why = False, "no credentials"
            if not ok:
                log.warning("refused %s %s from %s: %s", request.method, request.path, peer[0], why)
                return web.json_response({"error": "authentication required", "code": "unauthorized"},
                                         status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    def token_ok(self, token: str) -> bool:
        if self.token is None:
            return True
        return hmac.compare_digest(token.encode(), self.token.encode())

    # ---------------------------------------------------------------- helpers
    async def body(self, request) -> dict:
        # body_exists, not can_read_body: a body already read (and cached) by
        # the pre-authentication guard still counts.
        if not request.body_exists:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise InvalidRequest("request body is not valid JSON") from None
        except RecursionError:      # json's C scanner: deep [[[[...]]]]
            raise InvalidRequest("request body is nested too deeply") from None
        if not isinstance(body, dict):
            raise InvalidRequest("request body must be a JSON object")
        return body

    def dom0(self, long: bool) -> dict:
        d = {"domid": 0, "name": "Domain-0", "uuid": host.DOM0_UUID,
             "memory": host.dom0_memory_mib(), "maxmem": host.dom0_memory_mib(),
             "vcpus": os.cpu_count(), "online_vcpus": os.cpu_count(),
             "state": "r-----", "status": 2, "cpu_time": host.host_cpu_seconds(),
             "start_time": START_TIME, "up_time": _uptime(), "cpu_weight": 256, "cpu_cap": 0,
             "sedf": {"period": 100.0, "slice": 0.0, "latency": 0.0, "extratime": 1, "weight": 256}}
        if long:
            d["sxp"] = ["domain", ["domid", 0], ["uuid", host.DOM0_UUID], ["vcpus", d["vcpus"]],
                        ["memory", d["memory"]], ["maxmem", d["maxmem"]], ["name", "Domain-0"],
                        ["on_poweroff", "destroy"], ["on_reboot", "restart"], ["on_crash", "restart"],
                        ["status", 2], ["state", "r-----"], ["cpu_time", round(d["cpu_time"], 6)],
                        ["online_vcpus", d["vcpus"]], ["up_time", round(d["up_time"], 2)]]
        return d

    def is_dom0(self, ref: str) -> bool:
        return ref in ("0", "Domain-0", host.DOM0_UUID)


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])
