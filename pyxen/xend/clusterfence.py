"""What the fence does to this host's domains (mixed into ClusterNode).

:class:`pyxen.cluster.fence.Fencer` decides *when*; these are the actions
it is given: pause (or kill) every QEMU of this host — always kill one
another host will restart (``on_host_failure='restart'``), resume one whose
lock this host holds again, and drop a copy whose lock another host holds
now.  Pauses come first and the state records after, because with etcd
gone each record costs a store timeout that the pauses must not wait for.
The kills come even earlier: :func:`kill_overdue` runs in a watchdog
thread, so the kill that the self-fencing inequality counts on
(docs/cluster.md) never waits for the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("pyxen.xend")


def restarted_elsewhere(dom) -> bool:
    """True for a domain with ``on_host_failure = 'restart'`` (clusterops's
    option; absent here it is 'preserve')."""
    return getattr(dom.cfg, "on_host_failure", "preserve") == "restart"


def kill_overdue(domains, membership, deadline: float, mode: str) -> list[str]:
    """The fence's first act, from a thread of its own (the watchdog, every
    0.25 s), so a busy or blocked event loop cannot delay it: once no
    keep-alive has been confirmed for *deadline* seconds, SIGKILL every
    QEMU another host may restart (``restart`` domains; all of them with
    ``destroy``).  ``expect_exit`` first, so the exit is not a crash to
    restart here.  The loop's fencer does the rest (pauses, records).
    Returns the names killed."""
    from ..hypervisor.qemu import process
    if membership.since_renewal() <= deadline:
        return []
    out = []
    for dom in list(domains.all()):
        pid = dom.pid
        if not pid or dom.expect_exit or not (mode == "destroy" or restarted_elsewhere(dom)):
            continue
        dom.expect_exit = True
        process.kill(pid)
        out.append(dom.name)
    if out:
        log.error("cluster: no etcd keep-alive for %.1f s: killed %s (another host may restart them)",
                  membership.since_renewal(), ", ".join(out))
    return out


class FenceActions:
    """Needs ``self.domains``, ``self.name``, ``self.state``, ``self._was_paused``
    and ``self._unforgotten``."""

    def _name(self, uuid: str) -> str:
        d = self.domains.by_uuid.get(uuid) if self.domains else None
        return d.name if d is not None else uuid

    async def _fence(self, mode: str, reason: str) -> list[str]:
        from ..hypervisor.qemu import process
        self.state = "fenced"
        done, killed = [], []
        for dom in list(self.domains.all()):
            if not dom.pid:
                continue
            if mode == "destroy" or restarted_elsewhere(dom):
                # A domain another host will restart (on_host_failure=
                # 'restart') has nothing to resume here, and a paused QEMU
                # would keep its disk images locked against the restart.
                # (The watchdog thread may have killed it already.)
                log.error("%s: destroyed by the fence: %s", dom.name, reason)
                dom.expect_exit = True
                process.kill(dom.pid)
                killed.append(dom)
                if mode == "destroy":
                    done.append(dom.uuid)
                continue
            if not process.alive(dom.pid):
                continue
            if dom.paused:
                # Paused already (by its user): the fencer retakes its lock
                # too, but leaves it paused (_resume).
                self._was_paused.add(dom.uuid)
                done.append(dom.uuid)
                continue
            try:
                await asyncio.wait_for(dom.monitor.stop(), 3)
            except Exception as e:      # noqa: BLE001 — a QEMU that will not pause is killed
                log.error("%s: cannot pause it (%s); killing QEMU instead", dom.name, e)
                dom.expect_exit = True
                process.kill(dom.pid)
                killed.append(dom)
                continue
            dom.paused = True
            log.error("%s: paused by the fence: %s", dom.name, reason)
            done.append(dom.uuid)
        for dom in killed:
            await self._forget_killed(dom)
        # Recorded after every domain is paused: with etcd gone each write
        # costs a timeout, which the pauses must not wait for.
        for uuid in done:
            d = self.domains.by_uuid.get(uuid)
            if d is not None:
                d.persist_quietly()
        return done

    async def _forget_killed(self, dom) -> None:
        """A domain the fence killed: its host resources go now, the
        registry forgets it; its store records (runtime here; the config
        only if no other host owns it) go when etcd answers again."""
        from ..hypervisor.qemu import process
        if dom.pid:
            await process.wait_exit(dom.pid, 5)
        try:
            await dom.release()
        except Exception as e:      # noqa: BLE001
            log.error("%s: releasing its resources after the fence failed: %s", dom.name, e)
        dom.pid = None
        self.domains.remove(dom)
        dom.gone.set()
        self.domains.emit("destroyed", dom)
        self._unforgotten[dom.uuid] = dom
        self.forget_pending()

    def forget_pending(self) -> None:
        """Delete the store records of fenced-off domains once etcd answers."""
        for uuid, dom in list(self._unforgotten.items()):
            try:
                dom.forget()
            except Exception:       # noqa: BLE001 — etcd still away: next tick
                continue
            del self._unforgotten[uuid]

    async def _drop_superseded(self, dom, why: str) -> None:
        """This host's copy of a domain another host owns now: stop it and
        forget only this host's record (the shared config is the owner's:
        Domain.forget keeps it, see may_forget_config)."""
        log.error("cluster: %s: %s; destroying this host's superseded copy", dom.name, why)
        self.domains.emit_raw({"time": time.time(), "event": "cluster-superseded", "host": self.name,
                               "name": dom.name, "uuid": dom.uuid, "detail": why})
        try:
            await dom.destroy(force=True)
        except Exception as err:    # noqa: BLE001 — at least never let it run
            log.error("%s: cannot destroy the superseded copy (%s); killing QEMU", dom.name, err)
            from ..hypervisor.qemu import process
            if dom.pid and process.alive(dom.pid):
                dom.expect_exit = True
                process.kill(dom.pid)

    async def _superseded(self, uuid: str, why: str) -> None:
        dom = self.domains.by_uuid.get(uuid) if self.domains else None
        if dom is not None:
            await self._drop_superseded(dom, why)

    async def _resume(self, uuid: str) -> None:
        dom = self.domains.by_uuid.get(uuid)
        if uuid in self._was_paused:
            self._was_paused.discard(uuid)
            return
        if dom is None or not dom.pid or not dom.paused:
            return
        await dom.monitor.cont()
        dom.paused = False
        dom.persist_quietly()
