"""Restart after a host failure: exactly one survivor starts the domain.

A domain whose config says ``on_host_failure = 'restart'`` is started again
elsewhere when its host fails; one that says ``preserve`` (the default) is
left for its host to come back.  "Failed" is decided in three steps, each
on facts every survivor can read, so that a slow host is never mistaken
for a dead one:

1. the host's lease is gone (membership says it is not up), and
2. the domain's lock key is gone (its owner key was attached to that lease:
   etcd deletes it with the lease, and a host that still holds it is alive
   as far as the cluster is concerned), and
3. both have stayed so for the *grace delay* on this survivor's own
   monotonic clock (the failed host's self-fencing pauses or destroys its
   guests before its lease can be taken: TTL minus a margin; the grace
   covers the rest, as Consul's lock-delay does).

Then the survivors hold an election on one key per domain,
``failover/<uuid>`` (:func:`pyxen.storekeys.failover`).  Its value names the
*incident* — the failed host and the revision of that host's runtime record
of the domain, which cannot change any more since the host is gone — and
the *target* the writer chose by placement.  Every survivor reads the key,
and if it does not already name this incident, writes it with a
compare-and-swap against the revision it read: exactly one writer wins per
incident, the others read the winner's choice and do nothing.  The target
then starts the domain from its shared config (``domains/<uuid>/config``),
taking the domain lock as any create does, which is the second guard
against a double run.

A host that comes back (:func:`superseded`) finds the claim naming it as
the failed host and another as the target: its copy is stale, so it must
not resume or restart it, only discard it (its paused QEMU and its runtime
record; the shared config now belongs to the new owner).

Nothing here starts QEMU or talks to etcd directly: the store is the
:class:`pyxen.store.Store` interface, and membership, the lock and the
start are callables, so the election is unit-tested on a FileStore.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import storekeys
from ..store import Store, StoreConflict, dump_json
from .placement import HostInfo, PlacementError, UP, choose, needs_of

log = logging.getLogger("pyxen.cluster.failover")

# Seconds a host's lease and the domain's lock must have been gone, on the
# survivor's clock, before it restarts the domain: xend passes its
# xend-cluster-grace (whose default this is).  What it must cover is small:
# the failed host fenced itself (killed its restart domains' QEMUs) at the
# latest margin seconds before its lease could expire, plus its fencer's
# tick and the kill (docs/cluster.md has the inequality, which holds with
# no grace at all: this second is slack for what it does not model).
DEFAULT_GRACE = 1.0


@dataclass(frozen=True)
class Incident:
    """One failure of one domain's host: the host and the revision of its
    (now frozen) runtime record of the domain."""
    host: str
    revision: int

    @property
    def id(self) -> str:
        return f"{self.host}@{self.revision}"


@dataclass(frozen=True)
class Claim:
    incident: str
    source: str          # the failed host
    target: str          # the survivor that starts the domain
    by: str              # the host that won the election
    revision: int = 0    # the claim key's revision
    state: str = "claimed"    # claimed | starting | started | failed
    reason: str = ""

    def record(self) -> dict:
        return {"incident": self.incident, "source": self.source, "target": self.target, "by": self.by,
                "state": self.state, "reason": self.reason}


def read_claim(store: Store, uuid: str) -> Claim | None:
    e = store.read(storekeys.failover(uuid))
    if e is None:
        return None
    try:
        v = json.loads(e.value)
        return Claim(str(v["incident"]), str(v["source"]), str(v["target"]), str(v["by"]), e.revision,
                     str(v.get("state", "claimed")), str(v.get("reason", "")))
    except (ValueError, KeyError, TypeError) as err:
        store.quarantine(storekeys.failover(uuid), f"not a failover claim: {err}")
        return None


def runtime_hosts(store: Store, uuid: str) -> dict[str, int]:
    """Every host holding a runtime record of *uuid* -> that record's revision."""
    out = {}
    for k in store.keys(storekeys.HOSTS_PREFIX):
        h = storekeys.host_of(k)
        if h and storekeys.uuid_of_runtime(h, k) == uuid:
            out[h] = store.revision(k)
    return out


def home(store: Store, uuid: str) -> str | None:
    """The host the domain last ran on: the target of its last claim while
    that host holds a record of it, else the one host with a record (the
    highest revision if a stale record lingers)."""
    recs = runtime_hosts(store, uuid)
    c = read_claim(store, uuid)
    if c is not None and c.target in recs and c.state != "failed":
        return c.target
    if not recs:
        return None
    if c is not None:
        # The failed source's record is stale once a claim moved the domain.
        recs = {h: r for h, r in recs.items() if not (h == c.source and c.target != h)} or recs
    return max(recs, key=lambda h: (recs[h], h))


def superseded(store: Store, me: str, uuid: str) -> Claim | None:
    """For a host coming back: the claim that moved *uuid* away from *me*
    (so this host must discard its copy, never resume it), else None."""
    c = read_claim(store, uuid)
    if c is not None and c.source == me and c.target != me and c.state != "failed":
        return c
    return None


def elect(store: Store, uuid: str, incident: Incident, target: str, me: str) -> Claim:
    """Write the claim for *incident* unless one exists; return the claim
    that holds (ours or the winner's).  One compare-and-swap: of all
    survivors that try for the same incident, exactly one writes."""
    key = storekeys.failover(uuid)
    for _ in range(20):
        cur = read_claim(store, uuid)
        if cur is not None and cur.incident == incident.id:
            return cur
        mine = Claim(incident.id, incident.host, target, me)
        try:
            # Absent when read means absent now (0), not "whatever revision the
            # key has by now": that read would let a late writer overwrite the
            # winner (two claims for one incident; seen as a flaky race test).
            rev = store.cas(key, cur.revision if cur else 0, dump_json(mine.record()))
        except StoreConflict:
            continue
        return Claim(mine.incident, mine.source, mine.target, mine.by, rev)
    raise StoreConflict(key, -1, store.revision(key))


def mark(store: Store, uuid: str, claim: Claim, state: str, reason: str = "") -> Claim | None:
    """Move the claim on (claimed -> starting -> started | failed) by
    compare-and-swap: the new claim, or None if it changed under us.  The
    target starts the domain only after winning claimed -> starting, so a
    second scan (or a second xend on the same name) cannot start it twice."""
    done = Claim(claim.incident, claim.source, claim.target, claim.by, 0, state, reason[:300])
    try:
        rev = store.cas(storekeys.failover(uuid), claim.revision, dump_json(done.record()))
    except StoreConflict:
        log.warning("domain %s: failover claim changed under us (wanted %s)", uuid, state)
        return None
    return Claim(done.incident, done.source, done.target, done.by, rev, state, done.reason)


@dataclass
class Action:
    uuid: str
    name: str
    what: str            # wait | start | started (not recorded yet) | elsewhere | refused | preserve
    detail: str = ""
    claim: Claim | None = None
    config: str = ""


@dataclass
class Failover:
    """One host's part in restarting failed hosts' domains: call
    :meth:`scan` every second or so; it returns what it decided, and the
    ``start`` actions are this host's to carry out: :func:`mark` the claim
    ``starting`` (and start only if that succeeded), then ``started`` or
    ``failed``."""
    store: Store
    me: str
    members: Callable[[], list[HostInfo]]      # every member, with state up or not
    lock_owner: Callable[[str], str | None]    # uuid -> the host holding its lock, None if free
    # Stored config text -> a DomainConfig (xend passes its parser: this
    # package knows nothing of pyxen.config); raises ValueError if unreadable.
    parse: Callable[[str], object] = None
    grace: float = DEFAULT_GRACE
    clock: Callable[[], float] = time.monotonic
    # uuid -> whether the domain exists on this host (xend's registry): a
    # claim this host moved to ``starting`` without the domain being here
    # is a start that was interrupted (etcd answered the move too late, or
    # the create met etcd away), to be carried out again.
    here: Callable[[str], bool] = lambda uuid: False
    # (uuid, incident id) -> when this host first saw it with host and lock gone.
    _gone_since: dict = field(default_factory=dict)

    def next_due(self) -> float | None:
        """When (this clock) the earliest incident still in its grace delay
        comes out of it, so the next scan can be made then rather than at
        the next poll; None if none is."""
        now = self.clock()
        due = [t + self.grace for t in self._gone_since.values() if t + self.grace > now]
        return min(due) if due else None

    def scan(self) -> list[Action]:
        hosts = self.members()
        up = {h.name for h in hosts if h.state == UP}
        if self.me not in up:
            return []       # a host that is not up itself takes nothing over
        now = self.clock()
        seen: set = set()
        out: list[Action] = []
        for k in self.store.keys(storekeys.CONFIG_PREFIX):
            uuid = storekeys.uuid_of_config(k)
            if uuid is None:
                continue
            act = self._one(uuid, k, hosts, up, now, seen)
            if act is not None:
                out.append(act)
        # Forget incidents that resolved themselves (the host came back).
        self._gone_since = {k: v for k, v in self._gone_since.items() if k in seen}
        return out

    def _one(self, uuid, cfg_key, hosts, up, now, seen) -> Action | None:
        owner = home(self.store, uuid)
        if owner is None or owner in up:
            return None
        if self.lock_owner(uuid) is not None:
            return None     # its lock still lives: not dead as far as the cluster knows
        raw = self.store.get(cfg_key)
        try:
            cfg = self.parse(raw.decode())
        except (AttributeError, ValueError) as e:      # UnicodeDecodeError is a ValueError
            return Action(uuid, uuid, "refused", f"its config cannot be read: {e}")
        if cfg.on_host_failure != "restart":
            return Action(uuid, cfg.name, "preserve", f"host {owner} is down; on_host_failure is preserve")
        inc = Incident(owner, runtime_hosts(self.store, uuid).get(owner, 0))
        seen.add((uuid, inc.id))
        first = self._gone_since.setdefault((uuid, inc.id), now)
        if now - first < self.grace:
            return Action(uuid, cfg.name, "wait", f"host {owner} down for {now - first:.1f} s")
        claim = read_claim(self.store, uuid)
        if claim is None or claim.incident != inc.id:
            try:
                target = choose(hosts, needs_of(cfg), exclude=(owner,)).host.name
            except PlacementError as e:
                return Action(uuid, cfg.name, "refused", str(e))
            claim = elect(self.store, uuid, inc, target, self.me)
        if claim.target != self.me:
            return Action(uuid, cfg.name, "elsewhere", f"{claim.target} restarts it", claim)
        if claim.state == "starting":
            # Only the target moves a claim to starting, and this host is it.
            if self.here(uuid):
                return Action(uuid, cfg.name, "started", "running here", claim)
            return Action(uuid, cfg.name, "start", f"host {owner} failed (an interrupted start, again)",
                          claim, raw.decode())
        if claim.state != "claimed":
            return None     # this host already started it (or failed to, and said so)
        return Action(uuid, cfg.name, "start", f"host {owner} failed", claim, raw.decode())
