"""Virtual networks (xm vnet-*): the host network's vnet table."""

from __future__ import annotations

from . import Call


def _doc(v) -> dict:
    return {"id": v.id, "sxp": v.to_sxp()}


async def list_vnets(call: Call):
    net = call.domains.net
    return {"vnets": [_doc(v) for v in sorted(net.vnets.values(), key=lambda v: v.id)]}


async def get_vnet(call: Call):
    return _doc(call.domains.net.lookup_vnet(call.match("vnet")))


async def create_vnet(call: Call):
    return _doc(await call.domains.net.vnet_create(call.args["config"]))


async def delete_vnet(call: Call):
    await call.domains.net.vnet_delete(call.match("vnet"))
    return {"ok": True}
