"""The domain lock: a domain runs only on the host its owner key names.

``cluster/owners/<uuid>`` holds ``{"host", "name", "lease"}`` and is
attached to the owner's lease; ``cluster/names/<name>`` holds ``{"uuid",
"host"}`` on the same lease, so a name is unique across the cluster too
(``xm create`` of a config whose name runs elsewhere is refused, whatever
its uuid).  Both are created in one transaction that compares them absent
(revision 0): of two hosts racing, exactly one wins, the other gets
:class:`LockHeld` naming the winner.

The owner key's revision is the fencing token: releasing compares it (a
host that lost the lock by lease expiry cannot delete the new owner's
key), and migration hands the lock over with :meth:`DomainLock.handover_ops`
— a compare of the source's revision and a put naming the target on the
target's lease — inside the commit transaction, so ownership moves in one
step and no reader ever sees two owners or none.

A lock whose host's lease has ended disappears with it.  Taking a domain
over after that (host-failure restart) is the caller's decision; it must
wait a grace delay after the key is gone (:mod:`.fence` says why) and then
:meth:`acquire` like any create — the compare makes it once-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import storekeys as K
from ..store import Compare, Delete, Put, StoreConflict, dump_json, load_record
from . import ClusterError


class LockHeld(ClusterError):
    """The domain (by uuid or by name) is owned by another host."""

    def __init__(self, what: str, host: str, uuid: str = ""):
        super().__init__(f"domain {what} is running on host {host}")
        self.host, self.uuid = host, uuid


@dataclass(frozen=True)
class Owner:
    host: str
    name: str
    lease: int
    revision: int       # the owner key's mod_revision: the fencing token


class DomainLock:
    """The domain locks, seen from this host (``membership.this_host``,
    whose current lease new locks are attached to)."""

    def __init__(self, store, membership):
        self.store = store
        self.membership = membership

    @property
    def host(self) -> str:
        return self.membership.this_host

    # ------------------------------------------------------------------ reads
    def owner_record(self, uuid: str) -> Owner | None:
        e = self.store.read(K.owner(uuid))
        if e is None:
            return None
        rec = load_record(e.value)
        return Owner(str(rec.get("host", "")), str(rec.get("name", "")), int(rec.get("lease", 0)), e.revision)

    def owner(self, uuid: str) -> str | None:
        """The host that owns domain *uuid*, None if nobody does."""
        rec = self.owner_record(uuid)
        return rec.host if rec else None

    def owner_of_name(self, name: str) -> tuple[str, str] | None:
        """(uuid, host) of the domain called *name* in the cluster, or None."""
        raw = self.store.get(K.owner_name(name))
        if raw is None:
            return None
        rec = load_record(raw)
        return str(rec.get("uuid", "")), str(rec.get("host", ""))

    def owners(self) -> dict[str, Owner]:
        """Every owned domain of the cluster: uuid → Owner (one request)."""
        out = {}
        for key, e in self.store.read_prefix(K.OWNERS_PREFIX).items():
            rec = load_record(e.value)
            out[key[len(K.OWNERS_PREFIX):]] = Owner(str(rec.get("host", "")), str(rec.get("name", "")),
                                                    int(rec.get("lease", 0)), e.revision)
        return out

    def owned(self) -> dict[str, Owner]:
        """This host's domains by the cluster's account."""
        return {u: o for u, o in self.owners().items() if o.host == self.host}

    def holds(self, uuid: str) -> bool:
        """True if this host owns *uuid* on its current lease."""
        rec = self.owner_record(uuid)
        return rec is not None and rec.host == self.host and rec.lease == self.membership.lease

    # ----------------------------------------------------------------- writes
    def _records(self, uuid: str, name: str, host: str, lease: int) -> list[Put]:
        return [Put(K.owner(uuid), dump_json({"host": host, "name": name, "lease": lease}), lease=lease),
                Put(K.owner_name(name), dump_json({"uuid": uuid, "host": host}), lease=lease)]

    def acquire(self, uuid: str, name: str) -> int:
        """Take the lock of domain *uuid* called *name* for this host;
        returns the fencing token.  Raises LockHeld naming the host that
        has the uuid or the name.  Taking a lock this host already holds
        (xend re-adopting its domains) returns its token unchanged."""
        lease = self.membership.lease
        for _ in range(5):
            mine = self.owner_record(uuid)
            if mine is not None:
                if mine.host != self.host:
                    raise LockHeld(name or uuid, mine.host, uuid)
                if mine.lease == lease and mine.name == name:
                    return mine.revision
                # Ours on an older lease (xend took a new one) or renamed: move it.
                try:
                    self.store.txn([Compare(K.owner(uuid), mine.revision)],
                                   [*self._records(uuid, name, self.host, lease),
                                    *([Delete(K.owner_name(mine.name))] if mine.name and mine.name != name
                                      else [])])
                except StoreConflict:
                    continue
                return self.store.revision(K.owner(uuid))
            by_name = self.owner_of_name(name)
            if by_name is not None and by_name[0] != uuid:
                raise LockHeld(name, by_name[1] or "?", by_name[0])
            name_rev = self.store.revision(K.owner_name(name))
            try:
                return self.store.txn([Compare(K.owner(uuid), 0), Compare(K.owner_name(name), name_rev)],
                                      self._records(uuid, name, self.host, lease))
            except StoreConflict:
                continue
        raise ClusterError(f"the lock of domain {name or uuid} keeps changing; try again")

    def release(self, uuid: str) -> None:
        """Drop this host's lock of *uuid* (the domain stopped here).  A lock
        that is another host's now is left alone."""
        for _ in range(5):
            rec = self.owner_record(uuid)
            if rec is None or rec.host != self.host:
                return
            ops: list = [Delete(K.owner(uuid))]
            by_name = self.owner_of_name(rec.name) if rec.name else None
            if by_name is not None and by_name[0] == uuid:
                ops.append(Delete(K.owner_name(rec.name)))
            try:
                self.store.txn([Compare(K.owner(uuid), rec.revision)], ops)
                return
            except StoreConflict:
                continue

    def rename(self, uuid: str, new_name: str) -> None:
        """Move this host's lock of *uuid* to *new_name* (``xm rename``);
        LockHeld if another domain of the cluster has that name."""
        rec = self.owner_record(uuid)
        if rec is None or rec.host != self.host:
            return
        other = self.owner_of_name(new_name)
        if other is not None and other[0] != uuid:
            raise LockHeld(new_name, other[1], other[0])
        self.acquire(uuid, new_name)

    def handover_ops(self, uuid: str, to_host: str, expected_revision: int,
                     to_lease: int | None = None) -> tuple[list[Compare], list[Put | Delete]]:
        """The compares and ops that move the lock of *uuid* from this host
        (at *expected_revision*, the token read when the migration began)
        to *to_host* on its lease (*to_lease*, else read from its record):
        put them into the migration's commit transaction.  Raises
        ClusterError if *to_host* is not up."""
        rec = self.owner_record(uuid)
        if rec is None or rec.host != self.host:
            raise ClusterError(f"this host ({self.host}) does not own domain {uuid}")
        if to_lease is None:
            raw = self.store.get(K.member(to_host))
            to_lease = int(load_record(raw).get("lease", 0)) if raw else 0
        if not to_lease:
            raise ClusterError(f"host {to_host} is not up in the cluster")
        return ([Compare(K.owner(uuid), expected_revision)], self._records(uuid, rec.name, to_host, to_lease))

    def handover(self, uuid: str, to_host: str, expected_revision: int, to_lease: int | None = None) -> int:
        """:meth:`handover_ops` applied on their own; returns the new token."""
        compares, ops = self.handover_ops(uuid, to_host, expected_revision, to_lease)
        try:
            return self.store.txn(compares, ops)
        except StoreConflict:
            now = self.owner(uuid)
            raise ClusterError(f"the lock of domain {uuid} changed during the migration "
                               f"(owner now {now or 'nobody'}); not handed over") from None


def owner_of(store, uuid: str) -> str | None:
    """The host named by domain *uuid*'s owner key, None when it is gone
    (for code without a Membership: failover's scan, tools)."""
    raw = store.get(K.owner(uuid))
    return str(load_record(raw).get("host", "")) or None if raw is not None else None
