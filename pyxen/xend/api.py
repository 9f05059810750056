"""xend's API: JSON resources over HTTP (aiohttp), on the Unix socket.

Handlers are thin: they parse the request, call the one implementation of
each operation (``Domains``/``Domain``), and turn XendError into a JSON
error with its status.  xm is a client of exactly this API.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time

from aiohttp import WSMsgType, web

from ..config.errors import ConfigError
from ..config.specs import VIF_KEYS, parse_vif
from ..hypervisor.qemu.accel import qemu_version
from ..pki import subject_cn
from . import apispec, host, metrics, passthrough, vtpm
from . import web as webui
from .console import ConsoleBusy, ConsoleClient
from .domains import Domains
from .errors import Conflict, InvalidRequest, NoSuchDomain, XendError

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
        self._qemu_version = None
        self.web = webui.Web(self)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth, errors], client_max_size=16 * 1024 * 1024)
        r = app.router
        self.web.add_routes(r)      # the page, browser login, uploads, VNC proxy
        r.add_get("/api/openapi.json", self.get_openapi)
        r.add_get("/api/events", self.events)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/host", self.get_host)
        r.add_get("/api/log", self.get_log)
        r.add_get("/api/dmesg", self.get_dmesg)
        r.add_post("/api/dmesg/clear", self.clear_dmesg)
        r.add_get("/api/domains", self.list_domains)
        r.add_post("/api/domains", self.create)
        r.add_post("/api/domains/restore", self.restore)
        r.add_get("/api/domains/{dom}", self.get_domain)
        r.add_post("/api/domains/{dom}/{op}", self.domain_op)
        r.add_get("/api/domains/{dom}/console", self.console)
        r.add_get("/api/domains/{dom}/vcpus", self.vcpus)
        r.add_get("/api/domains/{dom}/devices/{cls}", self.devices)
        r.add_post("/api/domains/{dom}/devices/{cls}", self.device_attach)
        r.add_delete("/api/domains/{dom}/devices/{cls}/{dev}", self.device_detach)
        r.add_get("/api/pci/assignable", self.pci_assignable)
        r.add_post("/api/pci/assignable", self.pci_assignable_add)
        r.add_post("/api/pci/assignable-remove", self.pci_assignable_remove)
        r.add_get("/api/vnets", self.list_vnets)
        r.add_post("/api/vnets", self.create_vnet)
        r.add_get("/api/vnets/{vnet}", self.get_vnet)
        r.add_delete("/api/vnets/{vnet}", self.delete_vnet)
        return app

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
    async def _body(self, request) -> dict:
        if not request.can_read_body:
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

    def _dom0(self, long: bool) -> dict:
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

    def _dom_info(self, dom, long: bool) -> dict:
        d = dom.info()
        if long:
            d["sxp"] = dom.sxpr()
        return d

    def _is_dom0(self, ref: str) -> bool:
        return ref in ("0", "Domain-0", host.DOM0_UUID)

    # --------------------------------------------------------------- handlers
    async def get_host(self, request):
        accel = await self.domains.accel.get()
        if self._qemu_version is None:
            self._qemu_version = await asyncio.get_running_loop().run_in_executor(
                None, qemu_version, self.domains.config["qemu-binary"])
        mem = sum(d.cfg.memory for d in self.domains.all())
        rows = host.info(accel, self.domains.accel.detail, self._qemu_version, mem)
        return web.json_response({"info": rows})

    async def get_log(self, request):
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return web.json_response({"log": text})

    async def get_openapi(self, request):
        return web.json_response(apispec.openapi(client_certs=self.client_certs))

    async def metrics(self, request):
        doms = self.domains.all()
        stats = await asyncio.gather(*(d.io_stats() for d in doms))
        body = metrics.render(self.domains, {d.uuid: st for d, st in zip(doms, stats)})
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def events(self, request):
        """Server-sent events: one 'event:' per domain change, a comment every 15 s."""
        q: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self.domains.subscribers.add(q)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await resp.prepare(request)
            await resp.write(b": pyxen xend events\n\n")
            while True:
                try:
                    ev = await asyncio.wait_for(q.get(), 15)
                except asyncio.TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                await resp.write(f"event: {ev['event']}\ndata: {json.dumps(ev)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.domains.subscribers.discard(q)
        return resp

    async def get_dmesg(self, request):
        return web.json_response({"lines": list(self.ring.lines) if self.ring else []})

    async def clear_dmesg(self, request):
        if self.ring:
            self.ring.lines.clear()
        return web.json_response({"ok": True})

    async def list_domains(self, request):
        long = request.query.get("long") in ("1", "true")
        out = [self._dom0(long)] + [self._dom_info(d, long) for d in self.domains.all()]
        if request.query.get("stats") in ("1", "true"):
            doms = self.domains.all()
            stats = await asyncio.gather(*(d.io_stats() for d in doms))
            for info, st in zip(out[1:], stats):
                info["stats"] = st
            out[0]["stats"] = {"vbds": 0, "vbd_rd": 0, "vbd_wr": 0, "vbd_oo": 0, "vbd_rsect": 0,
                               "vbd_wsect": 0, "nets": 0, "net_tx": 0, "net_rx": 0}
        return web.json_response({"domains": out})

    async def get_domain(self, request):
        ref = request.match_info["dom"]
        long = request.query.get("long") in ("1", "true")
        if self._is_dom0(ref):
            return web.json_response(self._dom0(long))
        return web.json_response(self._dom_info(self.domains.lookup(ref), long))

    async def create(self, request):
        body = await self._body(request)
        config = body.get("config")
        if not isinstance(config, str):
            raise InvalidRequest("'config' (the domain's SXP) is required")
        notes = body.get("notes") or []
        dom = await self.domains.create(config, paused=bool(body.get("paused")))
        for n in notes if isinstance(notes, list) else []:
            log.info("%s: %s", dom.name, str(n)[:500])
        return web.json_response({"domid": dom.domid, "name": dom.name, "uuid": dom.uuid}, status=201)

    async def restore(self, request):
        body = await self._body(request)
        path = body.get("file")
        if not isinstance(path, str) or not path:
            raise InvalidRequest("'file' (the save file's absolute path) is required")
        dom = await self.domains.restore(path, paused=bool(body.get("paused")))
        return web.json_response({"domid": dom.domid, "name": dom.name, "uuid": dom.uuid}, status=201)

    async def domain_op(self, request):
        ref, op = request.match_info["dom"], request.match_info["op"]
        body = await self._body(request)
        if self._is_dom0(ref):
            verb = {"destroy": "destroyed", "shutdown": "shutdown", "reboot": "rebooted",
                    "pause": "paused", "unpause": "unpaused", "save": "saved",
                    "migrate": "migrated"}.get(op, op)
            raise InvalidRequest(f"Domain 0 cannot be {verb}")
        dom = self.domains.lookup(ref)
        if op == "pause":
            await dom.pause()
        elif op == "unpause":
            await dom.unpause()
        elif op == "destroy":
            await dom.destroy()
        elif op == "save":
            path = body.get("file")
            if not isinstance(path, str) or not path:
                raise InvalidRequest("'file' (where to save, an absolute path) is required")
            res = await dom.save(path, keep=bool(body.get("checkpoint")))
            return web.json_response(res)
        elif op == "migrate":
            from .migration import migrate
            host = body.get("host")
            if not isinstance(host, str) or not host:
                raise InvalidRequest("'host' (the destination) is required")
            res = await migrate(dom, host, _opt_int(body, "port"), bool(body.get("live")),
                                _opt_float(body, "resource"), _opt_int(body, "downtime"))
            return web.json_response(res)
        elif op == "vcpu-pin":
            await dom.vcpu_pin(str(body.get("vcpu", "")), str(body.get("cpus", "")))
        elif op == "sched-credit":
            await dom.sched_credit(_opt_int(body, "weight"), _opt_int(body, "cap"))
        elif op == "sched-sedf":
            await dom.sched_sedf(_opt_float(body, "period"), _opt_float(body, "slice"),
                                 _opt_float(body, "latency"), _opt_int(body, "extratime"),
                                 _opt_int(body, "weight"))
        elif op == "vcpu-set":
            await dom.vcpu_set(_req_int(body, "vcpus"))
        elif op == "mem-set":
            await dom.mem_set(_req_int(body, "memory"))
        elif op == "mem-max":
            await dom.mem_max(_req_int(body, "memory"))
        elif op == "sysrq":
            await dom.sysrq(str(body.get("key", "")))
        elif op == "qemu-monitor":
            out = await dom.qemu_monitor(str(body.get("command", "")))
            return web.json_response({"output": out})
        elif op == "rename":
            await dom.rename(str(body.get("name", "")))
        elif op == "pci-attach":
            spec = await passthrough.attach(dom, body.get("dev"), body.get("vslot"))
            return web.json_response({"dev": spec.bdf})
        elif op == "pci-detach":
            await passthrough.detach(dom, body.get("dev"))
        elif op == "dump-core":
            path = await dom.dump_core(body.get("file") or None, bool(body.get("live")),
                                       bool(body.get("crash")), bool(body.get("reset")))
            return web.json_response({"file": path})
        elif op == "block-attach":
            await dom.block_attach(str(body.get("uname", "")), str(body.get("vdev", "")),
                                   str(body.get("mode", "")), str(body.get("backend") or "0"))
        elif op == "block-detach":
            await dom.block_detach(str(body.get("dev", "")), bool(body.get("force")))
        elif op in ("shutdown", "reboot"):
            reason = "reboot" if op == "reboot" else body.get("reason", "poweroff")
            if reason not in ("poweroff", "halt", "reboot"):
                raise InvalidRequest(f"unknown shutdown reason {reason!r}")
            await dom.shutdown(reason)
            if body.get("wait") and reason != "reboot":
                timeout = float(body.get("timeout", 0) or 0) or None
                try:
                    await asyncio.wait_for(self._stopped(dom), timeout)
                except asyncio.TimeoutError:
                    raise Conflict(f"Domain {dom.name} did not shut down within {timeout:.0f} s") from None
        else:
            raise InvalidRequest(f"Operation not implemented: {op}")
        # (every op above is listed in apispec.OPS, which documents it)
        return web.json_response({"ok": True})

    async def _stopped(self, dom) -> None:
        """Until the domain is gone or stays shut down (on_poweroff=preserve)."""
        waits = [asyncio.ensure_future(dom.gone.wait()), asyncio.ensure_future(dom.halted.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def vcpus(self, request):
        ref = request.match_info["dom"]
        if self._is_dom0(ref):
            return web.json_response({"name": "Domain-0", "domid": 0, "vcpus": host.dom0_vcpus()})
        dom = self.domains.lookup(ref)
        return web.json_response({"name": dom.name, "domid": dom.domid, "vcpus": dom.vcpu_info()})

    async def devices(self, request):
        ref, cls = request.match_info["dom"], request.match_info["cls"]
        if cls not in ("vbd", "vif", "pci", "vtpm"):
            raise InvalidRequest(f"unknown device class {cls!r}")
        if self._is_dom0(ref):
            return web.json_response({"devices": []})
        dom = self.domains.lookup(ref)
        if cls == "pci":
            return web.json_response({"devices": passthrough.devices(dom)})
        if cls == "vtpm":
            return web.json_response({"devices": vtpm.devices(dom)})
        return web.json_response({"devices": dom.devices(cls)})

    # ------------------------------------------------------ host PCI devices
    async def pci_assignable(self, request):
        return web.json_response({"devices": passthrough.list_assignable()})

    async def pci_assignable_add(self, request):
        body = await self._body(request)
        res = await passthrough.assignable_add(self.domains, body.get("dev"))
        return web.json_response(res)

    async def pci_assignable_remove(self, request):
        body = await self._body(request)
        res = await passthrough.assignable_remove(self.domains, body.get("dev"), bool(body.get("rebind")))
        return web.json_response(res)

    async def device_attach(self, request):
        ref, cls = request.match_info["dom"], request.match_info["cls"]
        body = await self._body(request)
        if cls != "vif":
            raise InvalidRequest(f"attaching a device of class {cls!r} is not implemented")
        if self._is_dom0(ref):
            raise InvalidRequest("Domain 0 has no virtual network interfaces to attach")
        dom = self.domains.lookup(ref)
        config = body.get("config") or {}
        if not isinstance(config, dict):
            raise InvalidRequest("'config' must be an object of vif settings")
        for k, v in config.items():
            if k not in VIF_KEYS:
                raise InvalidRequest(f"Invalid argument: {k}={v}")
            if not isinstance(v, str) or not v or "," in v:
                raise InvalidRequest(f"Invalid argument: {k}={v}")
        try:
            spec = parse_vif(",".join(f"{k}={v}" for k, v in config.items()))
        except ConfigError as e:
            raise InvalidRequest(str(e)) from None
        devid = await dom.network_attach(spec)
        return web.json_response({"devid": devid}, status=201)

    async def device_detach(self, request):
        ref, cls, dev = request.match_info["dom"], request.match_info["cls"], request.match_info["dev"]
        if cls != "vif":
            raise InvalidRequest(f"detaching a device of class {cls!r} is not implemented")
        if self._is_dom0(ref):
            raise InvalidRequest("Domain 0 has no virtual network interfaces to detach")
        dom = self.domains.lookup(ref)
        await dom.network_detach(dev, force=request.query.get("force") in ("1", "true"))
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------ vnets
    async def list_vnets(self, request):
        net = self.domains.net
        return web.json_response({"vnets": [{"id": v.id, "sxp": v.to_sxp()}
                                             for v in sorted(net.vnets.values(), key=lambda v: v.id)]})

    async def get_vnet(self, request):
        v = self.domains.net.lookup_vnet(request.match_info["vnet"])
        return web.json_response({"id": v.id, "sxp": v.to_sxp()})

    async def create_vnet(self, request):
        body = await self._body(request)
        config = body.get("config")
        if not isinstance(config, str):
            raise InvalidRequest("'config' (the vnet's SXP) is required")
        v = await self.domains.net.vnet_create(config)
        return web.json_response({"id": v.id, "sxp": v.to_sxp()}, status=201)

    async def delete_vnet(self, request):
        await self.domains.net.vnet_delete(request.match_info["vnet"])
        return web.json_response({"ok": True})

    async def console(self, request):
        ref = request.match_info["dom"]
        if self._is_dom0(ref):
            raise InvalidRequest("Domain-0 has no console here; use the host's terminal")
        dom = self.domains.lookup(ref)
        if dom.console is None:
            raise Conflict(f"Domain {dom.name} has no console (state {dom.state})")
        relay = dom.console
        ws = web.WebSocketResponse(heartbeat=30)
        if not ws.can_prepare(request).ok:      # (found by schemathesis: was a text/plain 400)
            raise InvalidRequest(f"Domain {dom.name}'s console is a websocket: use xm console or the web page")

        class Ws(ConsoleClient):
            async def send(self, data):
                await ws.send_bytes(data)

            async def close(self):
                await ws.close()

        client = Ws()
        try:
            pending = relay.attach(client)
        except ConsoleBusy as e:
            raise Conflict(str(e)) from None
        try:
            await ws.prepare(request)
            if pending:
                await ws.send_bytes(pending)
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await relay.write(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await relay.write(msg.data.encode())
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            relay.detach(client)
        return ws


def _opt_int(body: dict, key: str) -> int | None:
    v = body.get(key)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{key} must be an integer, got {v!r}") from None


def _opt_float(body: dict, key: str) -> float | None:
    v = body.get(key)
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{key} must be a number, got {v!r}") from None


def _req_int(body: dict, key: str) -> int:
    v = _opt_int(body, key)
    if v is None:
        raise InvalidRequest(f"{key} is required")
    return v


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])
