"""The domain collection: list, look up, create, restore; a domain's vCPUs."""

from __future__ import annotations

import asyncio
import logging

from .. import host, remotecreate
from . import Call
from .cluster import cluster_of, place, this_host, with_hosts

log = logging.getLogger("pyxen.api")


def _info(dom, long: bool) -> dict:
    d = dom.info()
    if long:
        d["sxp"] = dom.sxpr()
    return d


async def list_domains(call: Call):
    long = call.args["long"]
    doms = call.domains.all()
    out = [call.api.dom0(long)] + [_info(d, long) for d in doms]
    if call.args["stats"]:
        stats = await asyncio.gather(*(d.io_stats() for d in doms))
        for info, st in zip(out[1:], stats):
            info["stats"] = st
        out[0]["stats"] = {"vbds": 0, "vbd_rd": 0, "vbd_wr": 0, "vbd_oo": 0, "vbd_rsect": 0,
                           "vbd_wsect": 0, "nets": 0, "net_tx": 0, "net_rx": 0}
    if call.args["cluster"]:
        return {"domains": with_hosts(call.domains, out), "host": this_host(call.domains)}
    return {"domains": out}


async def get_domain(call: Call):
    ref, long = call.match("dom"), call.args["long"]
    if call.api.is_dom0(ref):
        return call.api.dom0(long)
    return _info(call.domains.lookup(ref), long)


async def create(call: Call):
    notes = call.args["notes"] or []
    if call.args["host"] or cluster_of(call.domains) is not None:
        cfg = call.domains.parse(call.args["config"])
        there = await place(call.domains, cfg, call.args["host"])
        if there is not None:
            # Placed on another member: its xend starts it.
            return await remotecreate.forward(call.domains, there.name, there.address, there.port, cfg,
                                              bool(call.args["paused"]))
        dom = await call.domains.create_config(cfg, paused=call.args["paused"])
    else:
        dom = await call.domains.create(call.args["config"], paused=call.args["paused"])
    for n in notes if isinstance(notes, list) else []:
        log.info("%s: %s", dom.name, str(n)[:500])
    return {"domid": dom.domid, "name": dom.name, "uuid": dom.uuid}


async def restore(call: Call):
    dom = await call.domains.restore(call.args["file"], paused=call.args["paused"])
    return {"domid": dom.domid, "name": dom.name, "uuid": dom.uuid}


async def vcpus(call: Call):
    ref = call.match("dom")
    if call.api.is_dom0(ref):
        return {"name": "Domain-0", "domid": 0, "vcpus": host.dom0_vcpus()}
    dom = call.domains.lookup(ref)
    return {"name": dom.name, "domid": dom.domid, "vcpus": dom.vcpu_info()}
