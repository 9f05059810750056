"""Self-fencing: a host that may have lost its lease stops its guests itself.

etcd's lease TTL is a minimum, not a deadline: a leader change renews
every lease (etcd-io/etcd#9395), so etcd cannot tell a host "you are out"
in time, and a host cut off from etcd cannot be told anything.  The rule
is therefore local, on this host's monotonic clock: when no keep-alive has
succeeded for ``ttl - margin`` seconds, this host pauses (``pause``, the
default) or destroys (``destroy``) every domain it runs, and logs why.  Its
lease cannot have expired before that instant, so no other host can have
taken a domain yet; another host takes one only after the owner key is
gone *and* a grace delay (``xend-cluster-grace``), which covers the clock
rates of two machines and the time a pause takes.

When keep-alives succeed again, each paused domain is resumed only if
this host holds its lock again — retaken with :meth:`DomainLock.acquire`,
which fails if the domain was restarted elsewhere meanwhile; such a copy
is never resumed: it is handed to ``superseded`` (xend destroys it,
keeping the shared config, which is the new owner's).

:class:`Fencer` is the policy, driven by :meth:`Fencer.step` with the
current time; xend runs :meth:`Fencer.run` as a task and gives it the
actions (``fence(mode, reason) -> [uuid, ...]``, ``resume(uuid)``,
``name(uuid)``) as coroutines, so this module knows nothing of domains.
"""

from __future__ import annotations

import asyncio
import logging

from . import ClusterError
from .lock import LockHeld

log = logging.getLogger("pyxen.cluster")

MODES = ("pause", "destroy")


class Fencer:
    def __init__(self, membership, lock, mode: str = "pause", margin: float = 3.0,
                 fence=None, resume=None, name=None, on_event=None, superseded=None, present=None):
        if mode not in MODES:
            raise ValueError(f"xend-cluster-fence must be one of {', '.join(MODES)}, not {mode!r}")
        if not 0 < margin < membership.ttl:
            raise ValueError(f"the fence margin ({margin} s) must be between 0 and the lease TTL "
                             f"({membership.ttl} s)")
        self.membership, self.lock = membership, lock
        self.mode, self.margin = mode, margin
        self._fence, self._resume, self._name = fence, resume, name or (lambda uuid: uuid)
        self._superseded = superseded      # async (uuid, why): its lock is another host's now
        # uuid -> whether the domain still exists here: one that went while
        # fenced (an arriving migration that failed) must not get its lock back.
        self._present = present or (lambda uuid: True)
        self.on_event = on_event or (lambda kind, detail: None)
        self.fenced = False
        self.paused: list[str] = []     # what this host paused when it fenced, to resume later
        self._stop = asyncio.Event()

    @property
    def deadline(self) -> float:
        """Seconds without a successful keep-alive after which this host fences."""
        return self.membership.ttl - self.margin

    def due(self) -> bool:
        return not self.fenced and self.membership.since_renewal() > self.deadline

    def recovered(self) -> bool:
        return self.fenced and self.membership.since_renewal() < self.deadline / 2

    async def step(self) -> None:
        """Fence if due, recover if fenced and the lease is renewed again."""
        if self.due():
            await self.fence_now()
        elif self.recovered():
            await self.recover()

    async def fence_now(self) -> None:
        since = self.membership.since_renewal()
        reason = (f"no etcd keep-alive for {since:.1f} s (lease TTL {self.membership.ttl} s, "
                  f"margin {self.margin:g} s)")
        self.fenced = True
        log.error("cluster: fencing this host: %s; %s its domains", reason,
                  "pausing" if self.mode == "pause" else "destroying")
        self.on_event("fenced", reason)
        try:
            done = list(await self._fence(self.mode, reason)) if self._fence else []
        except Exception:      # noqa: BLE001 — a failed fence is logged loudly, then retried
            log.exception("cluster: fencing failed; retrying")
            self.fenced = False
            return
        self.paused = done if self.mode == "pause" else []

    async def recover(self) -> None:
        """Keep-alives work again: resume what we paused, lock by lock."""
        log.warning("cluster: etcd keep-alive works again (lease %x)", self.membership.lease)
        left = []
        for uuid in self.paused:
            name = self._name(uuid)
            if not self._present(uuid):
                log.info("cluster: %s went while this host was fenced; not retaking its lock", name)
                continue
            try:
                self.lock.acquire(uuid, name)
            except LockHeld as e:
                log.error("cluster: not resuming %s: %s now", name, e)
                self.on_event("not-resumed", f"{name}: {e}")
                if self._superseded is not None:
                    try:
                        await self._superseded(uuid, str(e))
                    except Exception:   # noqa: BLE001
                        log.exception("cluster: dropping the superseded copy of %s failed", name)
                continue
            except ClusterError as e:
                log.warning("cluster: cannot retake the lock of %s yet: %s", name, e)
                left.append(uuid)
                continue
            except Exception as e:   # noqa: BLE001 — etcd flapping: try again next step
                log.warning("cluster: cannot retake the lock of %s yet: %s", name, e)
                left.append(uuid)
                continue
            try:
                if self._resume:
                    await self._resume(uuid)
                log.info("cluster: resumed %s: this host holds its lock again", name)
                self.on_event("resumed", name)
            except Exception:   # noqa: BLE001
                log.exception("cluster: resuming %s failed", name)
        self.paused = left
        if not left:
            self.fenced = False
            # Said even when nothing was paused (every domain was a restart
            # one, killed): the host takes new domains again.
            self.on_event("recovered", f"lease {self.membership.lease:x}")

    async def run(self, interval: float = 0.25) -> None:
        while not self._stop.is_set():
            try:
                await self.step()
            except Exception:    # noqa: BLE001 — the watchdog itself must not die
                log.exception("cluster: fence check failed")
            try:
                await asyncio.wait_for(self._stop.wait(), interval)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()
