"""xend's API: JSON resources over HTTP (aiohttp), on the Unix socket.

Handlers are thin: they parse the request, call the one implementation of
each operation (``Domains``/``Domain``), and turn XendError into a JSON
error with its status.  xm is a client of exactly this API.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSMsgType, web

from ..hypervisor.qemu.accel import qemu_version
from . import host
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
    def __init__(self, domains: Domains, log_path):
        self.domains = domains
        self.log_path = log_path
        self._qemu_version = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors], client_max_size=16 * 1024 * 1024)
        r = app.router
        r.add_get("/api/host", self.get_host)
        r.add_get("/api/log", self.get_log)
        r.add_get("/api/domains", self.list_domains)
        r.add_post("/api/domains", self.create)
        r.add_post("/api/domains/restore", self.restore)
        r.add_get("/api/domains/{dom}", self.get_domain)
        r.add_post("/api/domains/{dom}/{op}", self.domain_op)
        r.add_get("/api/domains/{dom}/console", self.console)
        r.add_get("/api/domains/{dom}/vcpus", self.vcpus)
        r.add_get("/api/domains/{dom}/devices/{cls}", self.devices)
        return app

    # ---------------------------------------------------------------- helpers
    async def _body(self, request) -> dict:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise InvalidRequest("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidRequest("request body must be a JSON object")
        return body

    def _dom0(self, long: bool) -> dict:
        d = {"domid": 0, "name": "Domain-0", "uuid": host.DOM0_UUID,
             "memory": host.dom0_memory_mib(), "maxmem": host.dom0_memory_mib(),
             "vcpus": __import__("os").cpu_count(), "online_vcpus": __import__("os").cpu_count(),
             "state": "r-----", "status": 2, "cpu_time": host.host_cpu_seconds(),
             "start_time": START_TIME, "up_time": _uptime(), "cpu_weight": 256, "cpu_cap": 0}
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

    async def list_domains(self, request):
        long = request.query.get("long") in ("1", "true")
        out = [self._dom0(long)] + [self._dom_info(d, long) for d in self.domains.all()]
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
                    "pause": "paused", "unpause": "unpaused", "save": "saved"}.get(op, op)
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
        elif op == "vcpu-pin":
            await dom.vcpu_pin(str(body.get("vcpu", "")), str(body.get("cpus", "")))
        elif op == "sched-credit":
            await dom.sched_credit(_opt_int(body, "weight"), _opt_int(body, "cap"))
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
        if cls not in ("vbd", "vif"):
            raise InvalidRequest(f"unknown device class {cls!r}")
        if self._is_dom0(ref):
            return web.json_response({"devices": []})
        dom = self.domains.lookup(ref)
        return web.json_response({"devices": dom.devices(cls)})

    async def console(self, request):
        ref = request.match_info["dom"]
        if self._is_dom0(ref):
            raise InvalidRequest("Domain-0 has no console here; use the host's terminal")
        dom = self.domains.lookup(ref)
        if dom.console is None:
            raise Conflict(f"Domain {dom.name} has no console (state {dom.state})")
        relay = dom.console
        ws = web.WebSocketResponse(heartbeat=30)

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


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])
