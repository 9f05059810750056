"""The interface to xend's persistent state: what must survive a crash.

Keys are slash-separated names built by :mod:`pyxen.storekeys` (nowhere
else); values are bytes.  The interface is the part of etcd v3 that xend
needs, so a cluster backend on etcd is a second implementation of
:class:`Store`, not a rewrite:

* every read returns the value with its *revision* (etcd's mod_revision):
  a number the store raises on every write, so a key's revision changes
  whenever its value does, and an absent key has revision 0;
* :meth:`Store.txn` is etcd's Txn with only the success branch: a list of
  :class:`Compare` (key must be at this revision) and a list of
  :class:`Put`/:class:`Delete`, applied all or none; a failed compare raises
  :class:`StoreConflict` and changes nothing;
* :meth:`Store.cas` and :meth:`Store.update_json` are the compare-and-swap
  loops built on it (domid allocation uses them);
* state kept as many files by another program (swtpm's) is not handed out
  as a live directory: :meth:`Store.checkout` copies the blobs under a key
  into a local directory before the program starts and :meth:`Store.checkin`
  puts the directory back at the points where it must be durable (stop,
  save, migration).  A networked store syncs at exactly those points.

Leases and watches are the cluster's additions (etcd's, as in
:mod:`pyxen.etcdstore`): :meth:`Store.grant_lease` gives a lease that lives
while :meth:`Store.keepalive` renews it, a :class:`Put` with ``lease=`` makes
a key that vanishes with its lease, and :meth:`Store.watch` calls back on
every change under a prefix from a given revision on.  A store on one host
(:class:`pyxen.filestore.FileStore`) has no use for them and refuses them
with :class:`NotClustered`; ``Store.clustered`` says which kind a store is.

:class:`pyxen.filestore.FileStore` implements it on a local directory.
Ordinary files that are not state (pid files, tokens, certificates, caches)
are written with :mod:`pyxen.fileutil`, so the importers of this module are
the modules that keep state.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


class StoreError(Exception):
    """The store cannot do what was asked (bad key, I/O error, full disk)."""


class NotClustered(StoreError):
    """A lease or a watch asked of a store that is one host's own."""

    def __init__(self, what: str):
        super().__init__(f"{what} needs a cluster store (xend-cluster-etcd is not configured)")


class StoreConflict(StoreError):
    """A compare of a transaction failed: the key is not at the expected
    revision (another writer got there first).  Nothing was written."""

    def __init__(self, key: str, expected: int, actual: int):
        super().__init__(f"state {key} changed under us (expected revision {expected}, found {actual})")
        self.key, self.expected, self.actual = key, expected, actual


@dataclass(frozen=True)
class Entry:
    value: bytes
    revision: int


@dataclass(frozen=True)
class Compare:
    """The transaction applies only if *key* is at *revision* (0: absent)."""
    key: str
    revision: int


@dataclass(frozen=True)
class Put:
    """Write *value*; with *lease* (a cluster store's lease id) the key is
    deleted by the store when that lease ends."""
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class WatchEvent:
    """A change seen by :meth:`Store.watch`: ``kind`` is ``put`` or
    ``delete`` (a deleted key's ``value`` is its value before, when known)."""
    kind: str
    key: str
    value: bytes
    revision: int
    lease: int = 0


class Watch:
    """A running watch; :meth:`cancel` stops it (no callback after it returns)."""

    def cancel(self) -> None:
        raise NotImplementedError


def check_key(key: str) -> None:
    """Keys are relative slash-separated names without empty, dot or
    dot-dot parts (a dot part would escape or hide in a file store)."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise StoreError(f"invalid store key {key!r}")


def dump_json(value) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True).encode()


def load_record(raw: bytes | None) -> dict:
    """A JSON object another writer (another host, in a cluster) stored:
    {} when absent, unreadable or not an object, never an exception."""
    try:
        v = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        return {}
    return v if isinstance(v, dict) else {}


class Store:
    """A flat key/value namespace with revisions and transactions.

    ``host`` is the name of the host this store is opened for: the prefix of
    its host-scoped keys (:func:`pyxen.storekeys.host_prefix`)."""

    host: str = ""

    # --- what a backend implements
    def read(self, key: str) -> Entry | None:
        raise NotImplementedError

    def txn(self, compares: list[Compare], ops: list[Put | Delete]) -> int:
        """Apply *ops* if every compare holds, all or none; returns the
        revision the written keys now have.  Raises StoreConflict."""
        raise NotImplementedError

    def keys(self, prefix: str = "") -> list[str]:
        """Every key starting with *prefix* (a plain string prefix), sorted."""
        raise NotImplementedError

    def quarantine(self, key: str, reason: str) -> None:
        """Set a corrupt value aside so it is kept for inspection, not fatal."""
        raise NotImplementedError

    def quarantined(self) -> list[str]:
        """What was set aside (names for a person to look at, not keys)."""
        raise NotImplementedError

    # --- a cluster store's additions (etcd's leases and watches)
    clustered: bool = False

    def grant_lease(self, ttl: int) -> int:
        """A new lease of at least *ttl* seconds; returns its id."""
        raise NotClustered("a lease")

    def keepalive(self, lease: int) -> int:
        """Renew *lease*; returns its TTL from now, 0 if it is gone."""
        raise NotClustered("a lease")

    def revoke_lease(self, lease: int) -> None:
        """End *lease* now: every key attached to it is deleted."""
        raise NotClustered("a lease")

    def lease_remaining(self, lease: int) -> tuple[int, int]:
        """(granted TTL, seconds left) of *lease*; (0, 0) if it is gone."""
        raise NotClustered("a lease")

    def watch(self, prefix: str, callback, start_revision: int = 0) -> "Watch":
        """Call ``callback(WatchEvent)`` for every change of a key under
        *prefix* after *start_revision* (0: from now), in revision order,
        from a thread of the store's; a dropped connection is resumed
        from the last revision seen, so no change is missed or repeated."""
        raise NotClustered("a watch")

    def head_revision(self) -> int:
        """The store's current revision (a watch started after it misses
        nothing written later)."""
        raise NotClustered("a watch")

    def read_prefix(self, prefix: str) -> dict[str, Entry]:
        """Every key under *prefix* with its value (one request on etcd)."""
        out = {}
        for k in self.keys(prefix):
            e = self.read(k)
            if e is not None:
                out[k] = e
        return out

    # --- built on those
    def get(self, key: str) -> bytes | None:
        e = self.read(key)
        return None if e is None else e.value

    def revision(self, key: str) -> int:
        e = self.read(key)
        return 0 if e is None else e.revision

    def put(self, key: str, value: bytes) -> int:
        return self.txn([], [Put(key, value)])

    def delete(self, key: str) -> None:
        self.txn([], [Delete(key)])

    def cas(self, key: str, revision: int, value: bytes) -> int:
        """Write *value* only if *key* is still at *revision* (0: absent)."""
        return self.txn([Compare(key, revision)], [Put(key, value)])

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under *prefix* at once."""
        ks = self.keys(prefix)
        if ks:
            self.txn([], [Delete(k) for k in ks])

    def get_json(self, key: str, default=None):
        raw = self.get(key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except ValueError as e:
            self.quarantine(key, f"not valid JSON: {e}")
            return default

    def put_json(self, key: str, value) -> int:
        return self.put(key, dump_json(value))

    def update_json(self, key: str, change, default=None, attempts: int = 100):
        """Read-modify-write of a JSON value by compare-and-swap: *change*
        gets the current value (*default* if absent or corrupt) and returns
        the new one, which is returned once it is written.  Retried while
        another writer wins the race."""
        for _ in range(attempts):
            e = self.read(key)
            old, rev = default, 0
            if e is not None:
                rev = e.revision
                try:
                    old = json.loads(e.value)
                except ValueError as err:
                    self.quarantine(key, f"not valid JSON: {err}")
                    rev = 0
            new = change(old)
            try:
                self.cas(key, rev, dump_json(new))
                return new
            except StoreConflict:
                continue
        raise StoreError(f"state {key} keeps changing under us ({attempts} attempts)")

    # --- state another program keeps as files
    def checkout(self, key: str, local_dir: Path) -> None:
        """Make *local_dir* (created 0700) hold exactly the blobs stored
        under ``key/``: one file per key, the rest of the key its path."""
        local_dir = Path(local_dir)
        want = {k[len(key) + 1:]: k for k in self.keys(key + "/")}
        try:
            local_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(local_dir, 0o700)
            for rel in _local_files(local_dir):
                if rel not in want:
                    (local_dir / rel).unlink()
            for rel, k in want.items():
                data = self.get(k)
                if data is None:
                    continue
                p = local_dir / rel
                p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
        except OSError as e:
            raise StoreError(f"cannot check out state {key} into {local_dir}: {e.strerror or e}") from e

    def checkin(self, key: str, local_dir: Path) -> None:
        """Store the files of *local_dir* as the blobs under ``key/``, in one
        transaction (files that are gone are deleted; dot files such as
        lock files are not state).  Unchanged blobs are not rewritten."""
        local_dir = Path(local_dir)
        ops: list[Put | Delete] = []
        try:
            have = set(_local_files(local_dir)) if local_dir.is_dir() else set()
            for rel in sorted(have):
                k = f"{key}/{rel}"
                data = (local_dir / rel).read_bytes()
                if self.get(k) != data:
                    ops.append(Put(k, data))
        except OSError as e:
            raise StoreError(f"cannot check in state {key} from {local_dir}: {e.strerror or e}") from e
        for k in self.keys(key + "/"):
            if k[len(key) + 1:] not in have:
                ops.append(Delete(k))
        if ops:
            self.txn([], ops)


def _local_files(d: Path) -> list[str]:
    """Relative paths of the regular files under *d*, dot names skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        for fn in filenames:
            if not fn.startswith(".") and os.path.isfile(os.path.join(dirpath, fn)):
                out.append(os.path.relpath(os.path.join(dirpath, fn), d))
    return out
