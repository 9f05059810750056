"""The domain lock and disk claims as xend uses them (mixed into ClusterNode).

Every create, restore and arriving migration is admitted here (its lock,
the claims on its shared disks), every domain that ends lets go of both,
``xm rename`` and ``xm unpause`` pass through, and the migration's commit
gets the lock's hand-over from :meth:`LockActions.handover_ops`.  Errors
become xend's: Conflict naming the other host, XendError when etcd fails.
"""

from __future__ import annotations

import logging

from ..cluster import ClusterError, claims
from ..cluster.lock import LockHeld
from ..store import StoreError
from .errors import Conflict, Unavailable, XendError

log = logging.getLogger("pyxen.xend")


class LockActions:
    """Needs ``self.lock``, ``self.store``, ``self.name``, ``self.membership``,
    ``self.fencer``, ``self.lock_enabled`` and ``self.arriving``."""

    def check(self, uuid: str, name: str) -> None:
        """Conflict (naming the host) if *uuid* or *name* runs elsewhere."""
        if not self.lock_enabled:
            return
        try:
            owner = self.lock.owner(uuid)
            if owner and owner != self.name:
                raise Conflict(f"domain {name} is running on host {owner}")
            by_name = self.lock.owner_of_name(name)
        except StoreError as e:
            raise Unavailable(f"cluster: cannot check the lock of domain {name}: {e}") from None
        if by_name is not None and by_name[1] != self.name:
            raise Conflict(f"domain {name} is running on host {by_name[1]}")

    def check_incoming(self, uuid: str, name: str) -> None:
        """An arriving migration: its lock stays the source's until the
        commit hands it over, but its name must not be another domain's."""
        if not self.lock_enabled:
            return
        try:
            by_name = self.lock.owner_of_name(name)
        except StoreError as e:
            raise Unavailable(f"cluster: cannot check the lock of domain {name}: {e}") from None
        if by_name is not None and by_name[0] != uuid:
            raise Conflict(f"domain {name} is running on host {by_name[1]}")

    def admit(self, cfg, incoming: bool = False) -> None:
        """A domain about to start here: its lock (an arriving migration's
        stays the source's until the commit hands it over) and the claims
        on its shared disks; Conflict naming the other host if refused."""
        if not self.lock_enabled:
            return
        if incoming:
            self.check_incoming(cfg.uuid, cfg.name)
            self.arriving.add(cfg.uuid)
        else:
            self.acquire(cfg.uuid, cfg.name)
        try:
            self.claim_disks(cfg.uuid, cfg.name, cfg.disks)
        except BaseException:
            if not incoming:
                self.released(cfg.uuid)
            else:
                self._release_claims(cfg.uuid)
            raise

    def claim_disks(self, uuid: str, name: str, disks) -> None:
        from ..storage import guard
        todo = []
        for d in disks:
            # w! skips the guard here as it does on one host (logged there).
            if d.target and d.kind in ("phy", "file", "tap") and d.mode != "w!":
                ids = guard.shared_ids(d.target)
                if ids:
                    todo.append((f"{d.uname} ({d.vdev})", ids, d.readonly))
        if not todo:
            return
        try:
            claims.claim(self.store, self.name, self.membership.lease, uuid, name, todo)
        except claims.DiskClaimed as e:
            raise Conflict(str(e)) from None
        except (ClusterError, StoreError) as e:
            raise Unavailable(f"cluster: cannot claim the disks of domain {name}: {e}") from None

    def _release_claims(self, uuid: str) -> None:
        try:
            claims.release(self.store, self.name, uuid)
        except StoreError as e:
            log.warning("cluster: cannot release the disk claims of %s (they go with the lease): %s", uuid, e)

    def acquire(self, uuid: str, name: str) -> None:
        if not self.lock_enabled:
            return
        if self.fencer.fenced:
            raise Unavailable(f"cluster: this host has lost touch with etcd; domain {name} not started")
        try:
            self.lock.acquire(uuid, name)
        except LockHeld as e:
            raise Conflict(str(e)) from None
        except (ClusterError, StoreError) as e:
            raise Unavailable(f"cluster: cannot take the lock of domain {name}: {e}") from None

    def rename(self, uuid: str, old: str, new: str) -> None:
        """``xm rename``: the name lock moves (Conflict if another domain of
        the cluster has the new name)."""
        if not self.lock_enabled or old == new:
            return
        try:
            self.lock.rename(uuid, new)
        except LockHeld as e:
            raise Conflict(str(e)) from None
        except (ClusterError, StoreError) as e:
            raise Unavailable(f"cluster: cannot rename the lock of domain {old}: {e}") from None

    def released(self, uuid: str) -> None:
        """The domain ended here: drop its lock (if it is still ours)."""
        if not self.lock_enabled:
            return
        self._release_claims(uuid)
        # An arriving migration dropped before it ran: a lock the source's
        # commit handed over is released too, so the source (which kept
        # the guest paused) can take it back when it is unpaused.
        self.arriving.discard(uuid)
        try:
            self.lock.release(uuid)
        except StoreError as e:
            log.warning("cluster: cannot release the lock of %s (it goes with the lease): %s", uuid, e)

    def arrived(self, uuid: str) -> None:
        """An arriving migration runs here now (the target's commit)."""
        self.arriving.discard(uuid)

    def may_forget_config(self, uuid: str) -> bool:
        """False when another host owns *uuid* now (a migration's source, a
        superseded copy): its shared config is that host's to keep; and for
        an arriving migration that never ran here (the source still has
        the guest)."""
        if uuid in self.arriving:
            return False
        try:
            owner = self.lock.owner(uuid)
        except StoreError:
            return False
        return owner is None or owner == self.name

    def may_run(self, uuid: str) -> bool:
        """False while this host is fenced and *uuid* is one it paused."""
        return not (self.fencer.fenced and uuid in self.fencer.paused)

    def before_unpause(self, dom) -> None:
        """``xm unpause`` of a domain: it runs only with its lock (a copy
        kept paused after an uncertain migration, or one whose lock lapsed,
        takes it first; Conflict naming the host that has it)."""
        if not self.may_run(dom.uuid):
            raise Conflict(f"domain {dom.name} was paused by the cluster fence (this host lost touch "
                           "with etcd); it resumes by itself once this host holds its lock again")
        if self.lock_enabled and not self.lock.holds(dom.uuid):
            self.admit(dom.cfg)

    def handover_ops(self, uuid: str, to_host: str, to_lease: int):
        """The lock's move to *to_host* for the migration commit transaction
        (([], []) without locks)."""
        if not self.lock_enabled:
            return [], []
        rec = self.lock.owner_record(uuid)
        if rec is None or rec.host != self.name:
            raise XendError(f"cluster: this host does not hold the lock of domain {uuid}; not migrating")
        return self.lock.handover_ops(uuid, to_host, rec.revision, to_lease or None)
