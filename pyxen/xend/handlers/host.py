"""Host-wide resources: xm info, log, dmesg, the metrics, the OpenAPI
document and the host's assignable PCI devices."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ...hypervisor.qemu.accel import qemu_version
from .. import apispec, host, metrics as prom, passthrough
from . import Call


async def get_host(call: Call):
    api, domains = call.api, call.domains
    accel = await domains.accel.get()
    if api.qemu_version is None:
        api.qemu_version = await asyncio.get_running_loop().run_in_executor(
            None, qemu_version, domains.config["qemu-binary"])
    mem = sum(d.cfg.memory for d in domains.all())
    return {"info": host.info(accel, domains.accel.detail, api.qemu_version, mem)}


async def get_log(call: Call):
    try:
        text = call.api.log_path.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    return {"log": text}


async def get_dmesg(call: Call):
    ring = call.api.ring
    return {"lines": list(ring.lines) if ring else []}


async def clear_dmesg(call: Call):
    if call.api.ring:
        call.api.ring.lines.clear()
    return {"ok": True}


async def get_openapi(call: Call):
    return apispec.openapi(client_certs=call.api.client_certs)


async def metrics(call: Call):
    doms = call.domains.all()
    stats = await asyncio.gather(*(d.io_stats() for d in doms))
    body = prom.render(call.domains, {d.uuid: st for d, st in zip(doms, stats)})
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def pci_assignable(call: Call):
    return {"devices": passthrough.list_assignable()}


async def pci_assignable_add(call: Call):
    return await passthrough.assignable_add(call.domains, call.args["dev"])


async def pci_assignable_remove(call: Call):
    return await passthrough.assignable_remove(call.domains, call.args["dev"], call.args["rebind"])
