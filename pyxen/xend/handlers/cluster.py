"""The cluster's operations: xm host-list, list --cluster, create on a
named or placed host, migrate by host name, host-evacuate.

xend is in a cluster when ``Domains.cluster`` is set (the foundation does
it when xend-cluster-etcd is configured: an object with the cluster store
``store`` and this host's name ``name``).  On a host with no cluster the
host-wide commands refuse with one line (409, "not in a cluster"), while
``list --cluster`` shows this host's domains with its name in the Host
column and ``create --host`` accepts only this host's own name: a script
written for a cluster still runs on one host.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ...cluster import evacuate as evac, placement, view
from ..errors import Conflict, InvalidRequest, XendError
from . import Call

log = logging.getLogger("pyxen.cluster")

NOT_IN_CLUSTER = "not in a cluster (xend-cluster-etcd is not set in xend-config.sxp)"


def cluster_of(domains):
    """The cluster xend is in, or None."""
    return getattr(domains, "cluster", None)


def this_host(domains) -> str:
    cl = cluster_of(domains)
    return cl.name if cl is not None else domains.store.host


def _host_json(h: placement.HostInfo) -> dict:
    return {"name": h.name, "address": h.address, "relocation_port": h.port, "state": h.state,
            "free_memory": h.free_memory, "vcpus": h.vcpus, "domains": h.domains,
            "bridges": sorted(h.bridges), "lease_age": h.lease_age}


async def list_hosts(call: Call):
    cl = cluster_of(call.domains)
    if cl is None:
        raise Conflict(NOT_IN_CLUSTER)
    return {"hosts": [_host_json(h) for h in view.hosts(cl.store)]}


def with_hosts(domains, rows: list[dict]) -> list[dict]:
    """GET /api/domains?cluster=1: this host's rows and every other host's."""
    cl = cluster_of(domains)
    if cl is None:
        return [dict(r, host=domains.store.host) for r in rows]
    return view.cluster_domains(cl.store, cl.name, rows)


async def place(domains, cfg, host: str | None) -> placement.HostInfo | None:
    """Where *cfg* is to run: None for this host (``--host`` names it, or
    placement picks it), else the member placement chose, whose xend the
    create is handed to (xend/remotecreate.py).  Conflict when no host fits.

    Every candidate's paths are checked on that host: this host looks
    itself, every other up host that has the memory and bridges is asked
    over the relocation link, all at once (:func:`with_paths`)."""
    cl = cluster_of(domains)
    me = this_host(domains)
    if cl is None:
        if host and host != me:
            raise Conflict(f"{NOT_IN_CLUSTER}: cannot create domain {cfg.name} on host {host} "
                           f"(this host is {me})")
        return None
    needs = placement.needs_of(cfg)
    hosts = await with_paths(domains, me, view.hosts(cl.store), needs, only=host or None)
    try:
        choice = placement.choose(hosts, needs, only=host or None)
    except placement.PlacementError as e:
        raise Conflict(str(e)) from None
    if choice.skipped:
        log.info("%s: placed on %s; skipped %s", cfg.name, choice.host.name,
                 "; ".join(f"{h}: {r}" for h, r in sorted(choice.skipped.items())))
    if choice.host.name == me:
        return None
    if not choice.host.address:
        raise Conflict(f"domain {cfg.name} is placed on host {choice.host.name}, which published no "
                       "relocation address to send the create to")
    return choice.host


async def with_paths(domains, me: str, hosts: list[placement.HostInfo], needs: placement.Needs,
                     only: str | None = None) -> list[placement.HostInfo]:
    """*hosts* with ``missing`` filled in: which of the domain's paths each
    lacks.  Only hosts that could otherwise run it are asked (a host that is
    down or too small is refused for that, as before); one that cannot be
    asked is unfit, and placement says why."""
    from dataclasses import replace
    from .. import remotecreate
    if not needs.paths:
        return hosts

    async def fill(h: placement.HostInfo) -> placement.HostInfo:
        if (only and h.name != only) or placement.unfit(h, needs) is not None:
            return h
        if h.name == me:
            return replace(h, missing=frozenset(remotecreate.missing_here(needs.paths)))
        if not h.address:
            return replace(h, missing=None, unknown="published no relocation address to ask")
        try:
            return replace(h, missing=await remotecreate.ask_missing(domains, h.name, h.address, h.port,
                                                                     needs.paths))
        except XendError as e:
            return replace(h, missing=None, unknown=str(e))
    return list(await asyncio.gather(*(fill(h) for h in hosts)))


def relocation_target(domains, host: str, port: int | None) -> tuple[str, int | None]:
    """xm migrate dom HOSTNAME: a member's name becomes its relocation
    address and port; anything else is an address as before."""
    cl = cluster_of(domains)
    if cl is None:
        return host, port
    h = view.resolve(cl.store, host)
    if h is None:
        return host, port
    if h.state != placement.UP:
        raise Conflict(f"host {host} is {h.state}: cannot migrate to it")
    if not h.address:
        raise Conflict(f"host {host} published no relocation address")
    return h.address, port or h.port or None


def _blocker(dom) -> str:
    if dom.cfg.pci:
        return "it has PCI devices passed through"
    if dom.job:
        return f"a {dom.job.get('kind', 'job')} is in flight"
    if str(dom.state) != "running":
        return f"it is {dom.state}"
    return ""


async def evacuate(call: Call):
    from ..migration import migrate
    cl = cluster_of(call.domains)
    if cl is None:
        raise Conflict(NOT_IN_CLUSTER)
    name = call.match("host")
    if name != cl.name:
        raise InvalidRequest(f"host-evacuate moves this host's domains: run it on {name} itself "
                             f"(this host is {cl.name})")
    doms = {d.name: d for d in call.domains.all()}
    cands = [evac.Candidate(n, placement.needs_of(d.cfg), _blocker(d)) for n, d in doms.items()]
    plan = evac.plan(view.hosts(cl.store), cl.name, cands)
    moved, failed = [], {}
    # In maintenance from now on (until xm host-maintenance NAME off), so
    # that no placement or failover elsewhere picks this host meanwhile or after.
    await _run(view.set_maintenance, cl.store, cl.name, True, "host-evacuate", time.time())
    for dname, target in plan.moves:
        h = view.resolve(cl.store, target)
        try:
            await migrate(doms[dname], h.address, h.port or None, live=True)
            moved.append({"name": dname, "host": target})
        except XendError as e:
            failed[dname] = str(e)
    log.info("host-evacuate: %d moved, %d stayed, %d failed; %s stays in maintenance", len(moved),
             len(plan.refused), len(failed), cl.name)
    return {"moved": moved, "refused": plan.refused, "failed": failed, "maintenance": True}


async def _run(fn, *args):
    """A blocking store call off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def maintenance(call: Call):
    """xm host-maintenance NAME on|off: lasting maintenance of any member
    (placement and failover pass it over; its domains keep running)."""
    cl = cluster_of(call.domains)
    if cl is None:
        raise Conflict(NOT_IN_CLUSTER)
    name = call.match("host")
    on = call.args["on"]
    known = {h.name for h in await _run(view.hosts, cl.store)}
    if name not in known:
        raise InvalidRequest(f"host {name} is not a member of the cluster "
                             f"(members: {', '.join(sorted(known)) or 'none'})")
    changed = await _run(view.set_maintenance, cl.store, name, bool(on), cl.name, time.time())
    log.info("host %s %s maintenance (from %s)%s", name, "in" if on else "out of", cl.name,
             "" if changed else ", as it already was")
    return {"host": name, "maintenance": bool(on), "changed": changed}
