"""The operations on one guest (``POST /api/domains/{dom}/<op>``): each
calls the domain's one implementation with the table's validated
parameters.  Domain-0 refusal and the lookup happened before (api.py)."""

from __future__ import annotations

import asyncio

from .. import passthrough
from ..errors import Conflict, InvalidRequest
from . import Call

OK = {"ok": True}


async def pause(call: Call):
    await call.dom.pause()
    return OK


async def unpause(call: Call):
    await call.dom.unpause()
    return OK


async def destroy(call: Call):
    await call.dom.destroy()
    return OK


async def _stopped(dom) -> None:
    """Until the domain is gone or stays shut down (on_poweroff=preserve)."""
    waits = [asyncio.ensure_future(dom.gone.wait()), asyncio.ensure_future(dom.halted.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _shutdown(dom, reason: str, wait: bool, timeout: float | None):
    await dom.shutdown(reason)
    if wait and reason != "reboot":
        try:
            await asyncio.wait_for(_stopped(dom), timeout or None)
        except asyncio.TimeoutError:
            raise Conflict(f"Domain {dom.name} did not shut down within {timeout:.0f} s "
                           f"(the guest did not act on the request); 'xm destroy {dom.name}' "
                           "stops it") from None
    return OK


async def shutdown(call: Call):
    a = call.args
    return await _shutdown(call.dom, a["reason"], a["wait"], a["timeout"])


async def reboot(call: Call):
    return await _shutdown(call.dom, "reboot", False, None)


async def sysrq(call: Call):
    await call.dom.sysrq(call.args["key"])
    return OK


async def qemu_monitor(call: Call):
    return {"output": await call.dom.qemu_monitor(call.args["command"])}


async def rename(call: Call):
    await call.dom.rename(call.args["name"])
    return OK


async def mem_set(call: Call):
    await call.dom.mem_set(call.args["memory"])
    return OK


async def mem_max(call: Call):
    await call.dom.mem_max(call.args["memory"])
    return OK


async def vcpu_set(call: Call):
    await call.dom.vcpu_set(call.args["vcpus"])
    return OK


async def vcpu_pin(call: Call):
    await call.dom.vcpu_pin(call.args["vcpu"], call.args["cpus"])
    return OK


async def sched_credit(call: Call):
    await call.dom.sched_credit(call.args["weight"], call.args["cap"])
    return OK


async def sched_sedf(call: Call):
    a = call.args
    await call.dom.sched_sedf(a["period"], a["slice"], a["latency"], a["extratime"], a["weight"])
    return OK


async def save(call: Call):
    return await call.dom.save(call.args["file"], keep=call.args["checkpoint"])


async def migrate(call: Call):
    from ..migration import migrate as run
    from .cluster import relocation_target
    a = call.args
    host, port = relocation_target(call.domains, a["host"], a["port"])
    return await run(call.dom, host, port, a["live"], a["resource"], a["downtime"],
                     copy_storage=a["copy_storage"], shared_disks=a["shared_disks"])


async def pci_attach(call: Call):
    spec = await passthrough.attach(call.dom, call.args["dev"], call.args["vslot"])
    return {"dev": spec.bdf}


async def pci_detach(call: Call):
    await passthrough.detach(call.dom, call.args["dev"])
    return OK


async def dump_core(call: Call):
    a = call.args
    return {"file": await call.dom.dump_core(a["file"] or None, a["live"], a["crash"], a["reset"])}


async def block_attach(call: Call):
    a = call.args
    await call.dom.block_attach(a["uname"], a["vdev"], a["mode"], a["backend"] or "0")
    return OK


async def block_detach(call: Call):
    await call.dom.block_detach(call.args["dev"], call.args["force"])
    return OK


async def snapshot_create(call: Call):
    a = call.args
    return await call.dom.snapshot_create(a["name"], disk_only=a["disk_only"], live=a["live"])


async def snapshot_revert(call: Call):
    return await call.dom.snapshot_revert(call.args["name"])


async def snapshot_delete(call: Call):
    return await call.dom.snapshot_delete(call.args["name"])


async def snapshot_list(call: Call):
    return {"name": call.dom.name, **call.dom.snapshot_list()}


async def unknown(call: Call):
    raise InvalidRequest(f"Operation not implemented: {call.match('op')}")
