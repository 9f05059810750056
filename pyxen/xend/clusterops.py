"""xend's part in the cluster's operations: publish this host's listing
once a second (for ``xm list --cluster`` elsewhere) and take part in
restarting a failed host's domains (:mod:`pyxen.cluster.failover`).

It runs only when xend is in a cluster (:func:`attach`, called by the
daemon), with the node's grace delay (``xend-cluster-grace``).  The
failover scan is woken by the node's etcd watch the moment a host's record
or a domain's lock is deleted, and again the moment that incident's grace
delay ends: a restart starts lease-gone + grace after the failure, not up
to two polls later (a poll every second remains, for a watch that missed
something).
Store calls block (etcd over HTTP), so they run in the default executor,
never on the event loop.  A start this host won goes through
``Domains.create``, which takes the domain lock like any create: if another
host somehow holds it, the create is refused and the claim marked failed —
never two copies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from ..cluster import failover as fo, view
from ..config.domain import DomainConfig
from ..store import StoreError
from . import host
from .errors import Unavailable, XendError

log = logging.getLogger("pyxen.cluster")


def _dom0() -> dict:
    """This host's Domain-0 row, as xm list shows it (pyxen.xend.api's dom0)."""
    return {"domid": 0, "name": "Domain-0", "uuid": host.DOM0_UUID, "memory": host.dom0_memory_mib(),
            "vcpus": os.cpu_count(), "online_vcpus": os.cpu_count(), "state": "r-----",
            "cpu_time": host.host_cpu_seconds()}


def attach(domains, node) -> "ClusterOps":
    """Run the cluster operations on *node*: the listing on its
    once-a-second loop (:meth:`pyxen.xend.cluster.ClusterNode.add_periodic`),
    the failover scan as a task of its own woken by the node's watch."""
    ops = ClusterOps(domains, node, grace=float(getattr(node, "grace", fo.DEFAULT_GRACE)))
    node.add_periodic(ops.publish)
    node.on_change(ops.kick)
    node.add_task(ops.run(), "cluster-failover")
    return ops


class ClusterOps:
    # The scan still runs this often with no news: a watch can miss an
    # event while it reconnects, and a claim another host failed to start
    # is looked at again.
    POLL = 1.0

    def __init__(self, domains, cluster, grace: float = fo.DEFAULT_GRACE):
        self.domains, self.cluster = domains, cluster
        self.publisher = view.ListingPublisher(cluster.store, cluster.name)
        self.failover = fo.Failover(cluster.store, cluster.name, lambda: view.hosts(cluster.store),
                                    cluster.lock.owner, grace=grace,
                                    parse=DomainConfig.from_sxp,
                                    here=lambda uuid: uuid in getattr(domains, "by_uuid", {}))
        self._said: dict[str, str] = {}     # uuid -> the last decision logged (no log line every second)
        self._kick: asyncio.Event | None = None
        self._scanning: asyncio.Lock | None = None
        self._publish_failing = False

    def kick(self, ev=None) -> None:
        """A host was lost or a lock went (the watch, on the loop): scan now,
        so the grace delay is counted from the deletion, not from a poll."""
        if self._kick is not None:
            self._kick.set()

    async def run(self) -> None:
        """Scan on every kick, when the earliest incident's grace delay
        ends (so the restart starts then, not up to a poll later), and at
        least every POLL seconds."""
        self._kick = asyncio.Event()
        while True:
            due = self.failover.next_due()
            wait = self.POLL if due is None else min(self.POLL, max(0.0, due - time.monotonic()))
            try:
                await asyncio.wait_for(self._kick.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self._kick.clear()
            try:
                await self.scan()
            except StoreError as e:      # etcd away: the fence's business, one line here
                log.warning("failover: scan skipped: %s", e)
            except Exception:    # noqa: BLE001 — the next round tries again
                log.exception("failover: scan failed")

    async def publish(self) -> None:
        """This host's rows for ``xm list --cluster`` elsewhere."""
        loop = asyncio.get_running_loop()
        infos = [_dom0()] + [d.info() for d in self.domains.all()]
        try:
            await loop.run_in_executor(None, self.publisher.publish, infos, time.monotonic())
        except StoreError as e:
            if not self._publish_failing:       # one line when it starts, not one a second
                log.warning("cluster: cannot publish this host's listing: %s", e)
            self._publish_failing = True
            return
        self._publish_failing = False

    async def tick(self) -> list[fo.Action]:
        """One publish and one scan (the unit tests' step)."""
        await self.publish()
        return await self.scan()

    async def scan(self) -> list[fo.Action]:
        if self._scanning is None:
            self._scanning = asyncio.Lock()
        async with self._scanning:      # a kick and a poll never start the same claim twice at once
            loop = asyncio.get_running_loop()
            actions = await loop.run_in_executor(None, self.failover.scan)
            for a in actions:
                if self._said.get(a.uuid) != a.what + a.detail[:40]:
                    self._said[a.uuid] = a.what + a.detail[:40]
                    if a.what != "start":
                        log.info("failover: %s: %s (%s)", a.name, a.what, a.detail)
                if a.what == "start":
                    await self._start(a)
                elif a.what == "started":
                    await loop.run_in_executor(None, fo.mark, self.cluster.store, a.uuid, a.claim, "started")
            return actions

    async def _start(self, a: fo.Action) -> None:
        loop = asyncio.get_running_loop()
        store = self.cluster.store
        claim = a.claim
        if claim.state == "claimed":
            # A StoreError here (etcd answered too late or not at all) ends
            # this scan; the claim may or may not say starting now, and the
            # next scan finds out (Failover's interrupted start).
            claim = await loop.run_in_executor(None, fo.mark, store, a.uuid, a.claim, "starting")
            if claim is None:
                return
        log.warning("failover: restarting domain %s here: %s", a.name, a.detail)
        try:
            dom = await self.domains.create(a.config)
        except Unavailable as e:
            # etcd away for a moment: nothing was decided; the claim stays
            # "starting" and the next scan tries again.
            log.warning("failover: domain %s not restarted yet: %s", a.name, e)
            return
        except (XendError, Exception) as e:
            log.error("failover: domain %s could not be restarted here: %s", a.name, e)
            await loop.run_in_executor(None, fo.mark, store, a.uuid, claim, "failed", str(e))
            return
        self.domains.emit("restarted", dom, reason=f"host {a.claim.source} failed")
        await loop.run_in_executor(None, fo.mark, store, a.uuid, claim, "started")
