"""Cluster membership: one etcd lease per xend, its host record, the host list.

A xend joins by taking a lease (TTL ``ttl`` s) and writing its record under
``cluster/members/<name>`` attached to it, plus a copy under
``cluster/known/<name>`` that outlives it (so a dead host is listed as
``lost``, not forgotten).  A thread of its own renews the lease every
``ttl/4`` s (each call given half that, at least 1 s; a failed one retried
after a quarter second) and republishes the record when xend's ``info()`` changes; it
never runs on xend's event loop, so a busy or blocked loop cannot starve
the lease, and a dead etcd cannot block the loop.

``last_ok`` is the monotonic time at which the last renewal etcd confirmed
was *sent*: etcd reset the lease's TTL at some instant after that, so the
lease cannot expire before ``last_ok + ttl`` (the clocks' rates aside).  The
fencer (:mod:`.fence`) judges the lease by it, on this host's own clock,
because etcd's TTL is only a minimum (a leader change renews every lease);
taking the time after the answer instead would let a slow answer push the
fence past the expiry.

A xend that restarts while its old lease still lives takes that lease back
(*previous_lease*, which xend keeps in a local file), so the owner keys of
the domains it re-adopts never lapse.  A second xend under a name whose
record is held by another live lease is refused: two machines must not
share a name.  When the lease is found gone (this host was cut off longer
than the TTL) the thread takes a new one and republishes: the host is back,
but its domains' locks are not — they are taken again only one by one
through :class:`pyxen.cluster.lock.DomainLock`, and only if nobody else
took them meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from .. import storekeys as K
from ..store import Compare, Delete, Put, StoreConflict, StoreError, dump_json, load_record
from . import ClusterError, ClusterEvent

log = logging.getLogger("pyxen.cluster")


@dataclass(frozen=True)
class HostInfo:
    """One host as the cluster sees it.

    ``state`` is ``up`` while its leased record exists (``fenced`` or
    ``maintenance`` when its record says so: placement skips those),
    ``lost`` once it is gone (the fields are then the last ones it
    published).  The record's JSON fields: ``name``, ``address``,
    ``relocation`` (HOST:PORT), ``relocation_port``, ``api``,
    ``free_memory`` (MiB), ``vcpus``, ``domains``, ``bridges``, ``state``,
    ``lease``, ``updated`` (wall clock).  ``free_mem`` is
    MiB, ``lease_age`` the seconds since its lease was last renewed (None
    when lost or unknown), ``address`` the host's cluster address,
    ``relocation`` and ``api`` ``HOST:PORT`` of its relocation server and
    HTTP API ("" if it has none), ``lease`` its lease id (0 when lost)."""
    name: str
    address: str
    state: str
    free_mem: int = 0
    vcpus: int = 0
    domains: int = 0
    bridges: tuple[str, ...] = ()
    lease_age: float | None = None
    relocation: str = ""
    api: str = ""
    lease: int = 0
    updated: float = 0.0

    @classmethod
    def from_record(cls, rec: dict, state: str, lease: int = 0, lease_age: float | None = None) -> "HostInfo":
        # A live host may say it is fencing itself or being evacuated.
        if state == "up" and rec.get("state") in ("fenced", "maintenance"):
            state = rec["state"]
        return cls(name=str(rec.get("name", "")), address=str(rec.get("address", "")), state=state,
                   free_mem=int(rec.get("free_memory", 0)), vcpus=int(rec.get("vcpus", 0)),
                   domains=int(rec.get("domains", 0)), bridges=tuple(rec.get("bridges", ())),
                   lease_age=lease_age, relocation=str(rec.get("relocation", "")),
                   api=str(rec.get("api", "")), lease=lease, updated=float(rec.get("updated", 0)))

    def toload_record(self) -> dict:
        return {"name": self.name, "address": self.address, "state": self.state, "free_memory": self.free_mem,
                "vcpus": self.vcpus, "domains": self.domains, "bridges": list(self.bridges),
                "lease_age": self.lease_age, "relocation": self.relocation, "api": self.api}


class Membership:
    """This host's place in the cluster on *store* (an EtcdStore).

    *info* is called (from the keep-alive thread) for the record to
    publish: a dict with ``address``, ``free_mem``, ``vcpus``, ``domains``,
    ``bridges``, ``relocation``, ``api``; it must be cheap and thread-safe."""

    def __init__(self, store, name: str, ttl: int = 8, info=None, previous_lease: int = 0,
                 on_lease_change=None, clock=time.monotonic, on_renewed=None):
        if ttl < 2:
            raise ValueError("the cluster lease TTL must be at least 2 s")
        self.store = store
        self.this_host = name
        self.ttl = ttl
        self.info = info or (lambda: {})
        self.lease = 0
        self.previous_lease = previous_lease
        self.on_lease_change = on_lease_change   # called with the new lease id
        self.on_renewed = on_renewed             # called with last_ok after each renewal
        self.clock = clock
        self.last_ok = 0.0              # monotonic time of the last confirmed renewal
        self.lease_lost = False         # the lease was found gone (we were cut off > TTL)
        self._published: bytes = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- joining
    def join(self) -> None:
        """Take (or take back) the lease and publish the record; raises
        ClusterError if etcd does not answer or the name is taken."""
        sent = self.clock()     # before the grant or keep-alive: see last_ok
        try:
            self._take_lease()
            self._publish(force=True)
        except StoreError as e:
            raise ClusterError(f"cannot join the cluster as {self.this_host}: {e}") from None
        self.last_ok = sent
        self._thread = threading.Thread(target=self._run, name="cluster-keepalive", daemon=True)
        self._thread.start()

    def _take_lease(self) -> None:
        key = K.member(self.this_host)
        held = self.store.read_with_lease(key)
        if self.previous_lease and self.store.keepalive(self.previous_lease) > 0:
            if held is None or held[1] == self.previous_lease:
                self._set_lease(self.previous_lease)
                log.info("cluster: took back lease %x as %s", self.lease, self.this_host)
                return
        if held is not None and held[1] and self.store.lease_remaining(held[1])[1] > 0:
            raise ClusterError(f"host name {self.this_host} is already in the cluster "
                               f"(another xend holds its lease; set a different xend-cluster-name)")
        self._set_lease(self.store.grant_lease(self.ttl))
        log.info("cluster: joined as %s with lease %x (TTL %d s)", self.this_host, self.lease, self.ttl)

    def _set_lease(self, lease: int) -> None:
        self.lease = lease
        self._published = b""
        if self.on_lease_change is not None:
            self.on_lease_change(lease)

    def record(self) -> dict:
        rec = dict(self.info())
        rec["name"] = self.this_host
        rec["lease"] = self.lease
        return rec

    def _publish(self, force: bool = False) -> None:
        rec = self.record()
        body = dump_json(rec)
        if body == self._published and not force:
            return
        rec["updated"] = time.time()
        stamped = dump_json(rec)
        self.store.txn([], [Put(K.member(self.this_host), stamped, lease=self.lease),
                            Put(K.known_host(self.this_host), stamped)])
        self._published = body

    def publish(self) -> None:
        """Republish now (xend calls it when its domains change)."""
        try:
            self._publish()
        except StoreError as e:
            log.warning("cluster: cannot publish this host's record: %s", e)

    # ------------------------------------------------------------- keep-alive
    # After a failed keep-alive the next try comes this soon, not a whole
    # interval later: one lost or hung call must not use up the fence's
    # TTL - margin budget by itself.
    RETRY = 0.25

    def _run(self) -> None:
        every = max(0.5, self.ttl / 4)
        # Half the interval per call (at least 1 s: a loaded machine answers
        # slowly, and a call given up on costs a retry): a hung call leaves
        # time for retries before the fence.
        timeout = min(every, max(1.0, every / 2))
        wait = every
        while not self._stop.wait(wait):
            wait = every
            sent = self.clock()
            try:
                left = self.store.keepalive(self.lease, timeout=timeout)
            except StoreError as e:
                log.warning("cluster: lease keep-alive failed (%.1f s since the last): %s",
                            self.clock() - self.last_ok, e)
                wait = self.RETRY
                continue
            if left <= 0:
                log.error("cluster: lease %x is gone (cut off longer than its TTL); joining again", self.lease)
                self.lease_lost = True
                sent = self.clock()
                try:
                    self._set_lease(self.store.grant_lease(self.ttl))
                except StoreError as e:
                    log.warning("cluster: cannot take a new lease: %s", e)
                    wait = self.RETRY
                    continue
            self.last_ok = sent
            if self.on_renewed is not None:
                try:
                    self.on_renewed(self.last_ok)
                except Exception:    # noqa: BLE001 — a hook must not stop the renewals
                    log.exception("cluster: renewal hook failed")
            try:
                self._publish()
            except StoreError as e:
                log.warning("cluster: cannot publish this host's record: %s", e)

    def since_renewal(self) -> float:
        """Seconds since etcd last confirmed the lease, on this host's clock."""
        return self.clock() - self.last_ok

    def leave(self, revoke: bool = True) -> None:
        """Stop renewing; with *revoke*, end the lease now (the record and
        every key attached to it, this host's domain locks too, go at once).
        xend stopping with domains running does not revoke: they keep their
        locks until the lease runs out, and a restarted xend takes it back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)
        if revoke and self.lease:
            try:
                self.store.revoke_lease(self.lease)
            except StoreError as e:
                log.warning("cluster: cannot revoke lease %x: %s", self.lease, e)

    # ------------------------------------------------------------------ hosts
    def hosts(self) -> list[HostInfo]:
        """Every host the cluster has seen, sorted by name: ``up`` ones with
        their lease age, ``lost`` ones with their last record."""
        live = self.store.read_prefix(K.MEMBERS_PREFIX)
        known = self.store.read_prefix(K.KNOWN_PREFIX)
        out = {}
        for entry in known.values():
            rec = load_record(entry.value)
            if rec.get("name"):
                out[rec["name"]] = HostInfo.from_record(rec, "lost")
        for entry in live.values():
            rec = load_record(entry.value)
            name, lease = rec.get("name"), int(rec.get("lease", 0))
            if not name:
                continue
            age = None
            if lease:
                try:
                    granted, left = self.store.lease_remaining(lease)
                    age = max(0.0, float(granted - left)) if granted else None
                except StoreError:
                    pass
            out[name] = HostInfo.from_record(rec, "up", lease, age)
        return [out[n] for n in sorted(out)]

    def host(self, name: str) -> HostInfo | None:
        """One host's record (None if the cluster never saw it)."""
        live = self.store.get(K.member(name))
        if live is not None:
            rec = load_record(live)
            return HostInfo.from_record(rec, "up", int(rec.get("lease", 0)))
        known = self.store.get(K.known_host(name))
        return HostInfo.from_record(load_record(known), "lost") if known is not None else None

    def forget(self, name: str) -> None:
        """Drop a lost host's last record (it left the cluster for good)."""
        rev = self.store.revision(K.known_host(name))
        if self.store.get(K.member(name)) is not None:
            raise ClusterError(f"host {name} is up: it cannot be forgotten")
        if rev:
            try:
                self.store.txn([Compare(K.member(name), 0), Compare(K.known_host(name), rev)],
                               [Delete(K.known_host(name))])
            except StoreConflict:
                raise ClusterError(f"host {name} changed meanwhile; try again") from None

    # ----------------------------------------------------------------- events
    def watch(self, callback, start_revision: int = 0):
        """Call ``callback(ClusterEvent)`` for each host and owner change
        (from a store thread); returns the watch (``.cancel()``)."""
        up = {h.name for h in self.hosts() if h.state == "up"}

        def on(ev):
            ce = to_event(ev, up)
            if ce is not None:
                callback(ce)
        return self.store.watch(K.CLUSTER_PREFIX, on, start_revision)


def to_event(ev, up: set[str]) -> ClusterEvent | None:
    """The ClusterEvent for a store WatchEvent under ``cluster/`` (None for
    keys that are not news: the ``known`` copies, names, claims).  *up* is
    the set of hosts up so far, kept up to date here: a record of a host
    not in it is a join, of one in it an update."""
    rec = load_record(ev.value)
    if ev.key.startswith(K.MEMBERS_PREFIX):
        host = rec.get("name") or ev.key[len(K.MEMBERS_PREFIX):]
        if ev.kind == "delete":
            up.discard(host)
            return ClusterEvent("host-lost", host, revision=ev.revision)
        kind = "host-update" if host in up else "host-up"
        up.add(host)
        return ClusterEvent(kind, host, revision=ev.revision, info=rec)
    if ev.key.startswith(K.OWNERS_PREFIX):
        uuid = ev.key[len(K.OWNERS_PREFIX):]
        if ev.kind == "delete":
            return ClusterEvent("owner-released", rec.get("host", ""), uuid, rec.get("name", ""), ev.revision)
        return ClusterEvent("owner", rec.get("host", ""), uuid, rec.get("name", ""), ev.revision)
    return None


