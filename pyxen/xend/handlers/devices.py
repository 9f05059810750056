"""A domain's devices: list them by class, hot-plug and unplug vifs."""

from __future__ import annotations

from .. import passthrough, vtpm
from ..errors import InvalidRequest
from . import Call

CLASSES = ("vbd", "vif", "pci", "vtpm")


async def devices(call: Call):
    ref, cls = call.match("dom"), call.match("cls")
    if cls not in CLASSES:
        raise InvalidRequest(f"unknown device class {cls!r}")
    if call.api.is_dom0(ref):
        return {"devices": []}
    dom = call.domains.lookup(ref)
    if cls == "pci":
        return {"devices": passthrough.devices(dom)}
    if cls == "vtpm":
        return {"devices": vtpm.devices(dom)}
    return {"devices": dom.devices(cls)}


async def attach(call: Call):
    ref, cls = call.match("dom"), call.match("cls")
    if cls != "vif":
        raise InvalidRequest(f"attaching a device of class {cls!r} is not implemented")
    if call.api.is_dom0(ref):
        raise InvalidRequest("Domain 0 has no virtual network interfaces to attach")
    dom = call.domains.lookup(ref)
    return {"devid": await dom.network_attach(call.args["config"])}


async def detach(call: Call):
    ref, cls = call.match("dom"), call.match("cls")
    if cls != "vif":
        raise InvalidRequest(f"detaching a device of class {cls!r} is not implemented")
    if call.api.is_dom0(ref):
        raise InvalidRequest("Domain 0 has no virtual network interfaces to detach")
    dom = call.domains.lookup(ref)
    await dom.network_detach(call.match("dev"), force=call.args["force"])
    return {"ok": True}
