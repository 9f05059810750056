"""The store on a local directory: one file per key.

Layout of the root directory (dot names are the store's own, never keys):

``<key>``
    the value, after one header line ``rev <N>`` (its revision).
``.revision``
    the last revision handed out (the store-wide counter, etcd-style).
``.lock``
    flock()ed by every operation: exclusive for writes, shared for reads,
    so two processes (xend and a test, or two xends in the tests) never
    interleave a transaction.
``.journal``
    present only while a multi-key transaction is being applied.
``.host``
    the host this store belongs to (a file store is one host's), so a
    later change of hostname does not orphan its host-scoped keys.
``.layout``
    the layout version; without it a store of the first layout is upgraded
    at open (:func:`pyxen.storekeys.upgrade_v1`).

Why a transaction is all or none, even if the process dies in the middle:
it is applied in three steps.  *Stage*: every new value (and the new
``.revision``) is written, fsynced, to a temp file in its key's directory;
this is the only step that needs disk space, so a full disk fails here and
the staged files are removed — nothing changed.  (A transaction of deletes
only is then done without the counter and the journal, which need space:
see ``_delete_in_place``.)  *Journal*: the list of
renames and deletes is written atomically to ``.journal``; from this point
on the transaction has happened.  *Apply*: the renames and deletes, which
need no space, then the journal is removed.  Whoever next takes the lock
(the same xend, a new one, another process) finds a journal and applies it
again — every step of it is idempotent — and removes staged temp files that
never made it into a journal.  A single-key write needs no journal: the
counter is renamed first (a revision lost in a crash is never reused) and
then the value.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from . import faults, storekeys
from .fileutil import atomic_write, fsync_dir
from .store import Compare, Delete, Entry, NotClustered, Put, Store, StoreConflict, StoreError, check_key

log = logging.getLogger("pyxen.store")

LAYOUT = 2
_TMP = ".txn.tmp"


def _header(rev: int) -> bytes:
    return f"rev {rev}\n".encode()


def _parse(raw: bytes) -> Entry:
    # A file without the header was put there by hand: it has no revision,
    # so it reads as revision 0 and the next compare-and-swap may replace it.
    if raw.startswith(b"rev "):
        line, sep, rest = raw.partition(b"\n")
        try:
            return Entry(rest, int(line[4:]))
        except ValueError:
            pass
    return Entry(raw, 0)


class FileStore(Store):
    def __init__(self, root: Path, host: str | None = None, read_only: bool = False):
        self.root = Path(root)
        self.read_only = read_only
        self._mutex = threading.RLock()
        if read_only and self.root.is_dir() and not (self.root / ".layout").exists() and \
                any(not n.startswith(".") for n in os.listdir(self.root)):
            raise StoreError(f"{self.root} is a store of the first layout: let xend open it once to upgrade it")
        try:
            if not read_only:
                self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lockfd = os.open(self.root / ".lock", os.O_RDONLY if read_only else os.O_RDWR | os.O_CREAT,
                                   0o600)
        except OSError as e:
            raise StoreError(f"cannot open the state store {self.root}: {e.strerror or e}") from e
        recorded = self._read_dot(".host")
        self.host = recorded or host or storekeys.local_host()
        if read_only:
            return
        with self._locked(exclusive=True):
            if recorded is None:
                self._write_dot(".host", self.host)
            if self._read_dot(".layout") is None:
                self._upgrade_v1()

    def close(self) -> None:
        fd, self._lockfd = getattr(self, "_lockfd", None), None
        if fd is not None:
            os.close(fd)

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ plumbing
    def _path(self, key: str) -> Path:
        check_key(key)
        return self.root / key

    def _read_dot(self, name: str) -> str | None:
        try:
            return (self.root / name).read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise StoreError(f"cannot read {self.root / name}: {e.strerror or e}") from e

    def _write_dot(self, name: str, text: str) -> None:
        try:
            atomic_write(self.root / name, (text + "\n").encode(), 0o600)
        except OSError as e:
            raise self._io_error(name, e) from e

    def _io_error(self, what: str, e: OSError) -> StoreError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreError(f"cannot write state {what}: no space left on {self.root}")
        return StoreError(f"cannot write state {what}: {e.strerror or e}")

    @contextmanager
    def _locked(self, exclusive: bool):
        # The mutex orders this process's threads (they share one flock);
        # the flock orders processes.
        with self._mutex:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                if not self.read_only and (self.root / ".journal").exists():
                    # A writer died mid-transaction: finish it before anyone
                    # reads (a read-only opener overlays the journal instead).
                    fcntl.flock(self._lockfd, fcntl.LOCK_EX)
                    if (self.root / ".journal").exists():
                        self._replay()
                yield
            finally:
                fcntl.flock(self._lockfd, fcntl.LOCK_UN)

    def _current_revision(self) -> int:
        raw = self._read_dot(".revision")
        try:
            return int(raw or 0)
        except ValueError:
            raise StoreError(f"{self.root / '.revision'} is corrupt: {raw!r}") from None

    # --------------------------------------------------------------- reads
    def _pending(self) -> dict[str, str]:
        """Read-only view of a journal a crashed writer left: key -> staged file."""
        try:
            j = json.loads((self.root / ".journal").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        out = {dest: tmp for tmp, dest in j.get("renames", [])}
        out.update({k: "" for k in j.get("deletes", [])})
        return out

    def _read_raw(self, key: str) -> Entry | None:
        p = self._path(key)
        if self.read_only:
            pending = self._pending().get(key)
            if pending is not None:
                if not pending:
                    return None
                p = self.root / pending
        try:
            return _parse(p.read_bytes())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as e:
            raise StoreError(f"cannot read state {key}: {e.strerror or e}") from e

    def read(self, key: str) -> Entry | None:
        with self._locked(exclusive=False):
            return self._read_raw(key)

    def keys(self, prefix: str = "") -> list[str]:
        # Walk only the directory the prefix names, not the whole store.
        start = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        out = []
        with self._locked(exclusive=False):
            for dirpath, dirnames, filenames in os.walk(start):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for fn in filenames:
                    if fn.startswith("."):
                        continue
                    rel = os.path.relpath(os.path.join(dirpath, fn), self.root)
                    if rel.startswith(prefix):
                        out.append(rel)
            if self.read_only:
                for k, tmp in self._pending().items():
                    if k.startswith(".") or not k.startswith(prefix):
                        continue
                    if tmp and k not in out:
                        out.append(k)
                    elif not tmp and k in out:
                        out.remove(k)
        return sorted(out)

    # -------------------------------------------------------------- writes
    def txn(self, compares: list[Compare], ops: list[Put | Delete]) -> int:
        if self.read_only:
            raise StoreError(f"the state store {self.root} is open read-only")
        for c in compares:
            check_key(c.key)
        for op in ops:
            check_key(op.key)
        with self._locked(exclusive=True):
            for c in compares:
                e = self._read_raw(c.key)
                actual = 0 if e is None else e.revision
                if actual != c.revision:
                    raise StoreConflict(c.key, c.revision, actual)
            rev = self._current_revision() + 1
            puts = {}
            for op in ops:
                if isinstance(op, Put):
                    if op.lease:
                        raise NotClustered("a key attached to a lease")
                    if not isinstance(op.value, bytes):
                        raise TypeError(f"store values are bytes, not {type(op.value).__name__}")
                    puts[op.key] = _header(rev) + op.value
                else:
                    puts.pop(op.key, None)
            deletes = [op.key for op in ops if isinstance(op, Delete) and op.key not in puts]
            # Later ops win, as in etcd's Txn.
            self._commit(rev, puts, deletes)
            return rev

    def _commit(self, rev: int, puts: dict[str, bytes], deletes: list[str],
                rmtrees: list[str] = (), dots: dict[str, bytes] | None = None) -> None:
        """Stage, journal, apply (see the module docstring)."""
        files = {".revision": f"{rev}\n".encode(), **(dots or {}), **puts}
        staged: list[tuple[str, str]] = []
        what = next(iter(puts), None) or next(iter(deletes), ".revision")
        try:
            for rel, data in files.items():
                staged.append((self._stage(rel, data), rel))
        except OSError as e:
            for tmp, _ in staged:
                _unlink(self.root / tmp)
            if not puts and deletes and not rmtrees and not dots and e.errno in (errno.ENOSPC, errno.EDQUOT):
                self._delete_in_place(deletes)
                return
            raise self._io_error(what, e) from e
        journal = {"rev": rev, "renames": staged, "deletes": deletes, "rmtrees": list(rmtrees)}
        if len(staged) + len(deletes) + len(rmtrees) > 2:
            try:
                atomic_write(self.root / ".journal", json.dumps(journal).encode(), 0o600)
            except OSError as e:
                for tmp, _ in staged:
                    _unlink(self.root / tmp)
                raise self._io_error(what, e) from e
            faults.point("store-journaled")       # tests: die between journal and apply
            self._apply(journal)
            _unlink(self.root / ".journal")
        else:
            self._apply(journal)

    def _delete_in_place(self, deletes: list[str]) -> None:
        """Deletes on a full disk: no staged counter, no journal, only the
        unlinks, which need no space (a destroy must work on a full disk).
        The counter is not raised: a deleted key reads as revision 0 anyway
        and the next write still gets a revision above every earlier one.
        A crash between two unlinks leaves half a record, which the next
        xend sets aside as incomplete rather than adopting."""
        log.warning("state disk %s is full: deleting %s without a journal", self.root, ", ".join(deletes))
        dirs = set()
        try:
            for key in deletes:
                p = self.root / key
                if _unlink(p):
                    dirs.add(p.parent)
                    self._prune(p.parent)
            for d in dirs:
                if d.exists():
                    fsync_dir(d)
        except OSError as e:
            raise StoreError(f"cannot delete state in {self.root}: {e.strerror or e}") from e

    def _stage(self, rel: str, data: bytes) -> str:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=_TMP, dir=p.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _unlink(Path(tmp))
            raise
        return os.path.relpath(tmp, self.root)

    def _apply(self, journal: dict) -> None:
        """Idempotent: a replay after a crash does it again harmlessly."""
        dirs = set()
        try:
            # The counter first: a crash after it loses a revision, never reuses one.
            for tmp, dest in sorted(journal["renames"], key=lambda r: r[1] != ".revision"):
                src = self.root / tmp
                if src.exists():
                    os.replace(src, self.root / dest)
                    dirs.add((self.root / dest).parent)
            for key in journal["deletes"]:
                p = self.root / key
                if _unlink(p):
                    dirs.add(p.parent)
                    self._prune(p.parent)
            for rel in journal.get("rmtrees", []):
                shutil.rmtree(self.root / rel, ignore_errors=True)
            for d in dirs:
                if d.exists():
                    fsync_dir(d)
        except OSError as e:
            # Left for the next lock holder to finish from the journal.
            raise StoreError(f"cannot apply a state transaction in {self.root}: {e.strerror or e}") from e

    def _prune(self, d: Path) -> None:
        """Drop directories a delete left empty, up to the store root."""
        while d != self.root:
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent

    def _replay(self) -> None:
        try:
            journal = json.loads((self.root / ".journal").read_text())
        except (OSError, ValueError) as e:
            # atomic_write makes a torn journal impossible; an unreadable one
            # is set aside rather than half-applied.
            log.error("state journal %s unreadable (%s); set aside", self.root / ".journal", e)
            os.replace(self.root / ".journal", self.root / f".journal.bad.{int(time.time())}")
            return
        log.warning("finishing a state transaction an earlier process left (revision %s)", journal.get("rev"))
        self._apply(journal)
        _unlink(self.root / ".journal")
        self._clean_staged()

    def _clean_staged(self) -> None:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d not in (".corrupt",)]
            for fn in filenames:
                if fn.startswith(".") and fn.endswith(_TMP):
                    _unlink(Path(dirpath) / fn)

    def quarantine(self, key: str, reason: str) -> None:
        p = self._path(key)
        dest = self.root / ".corrupt" / f"{key.replace('/', '_')}.{int(time.time())}"
        with self._locked(exclusive=True):
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(p, dest)
                log.error("state %s is corrupt (%s); moved to %s", key, reason, dest)
                self._prune(p.parent)
            except FileNotFoundError:
                pass

    def quarantined(self) -> list[str]:
        """The names of the values set aside as corrupt (oldest first)."""
        d = self.root / ".corrupt"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    # ------------------------------------------------------------- upgrade
    def _upgrade_v1(self) -> None:
        """First layout -> this one, in one transaction: host-scoped keys
        move under hosts/<host>/, every value gets its revision header,
        vTPM directories (``.dirs/<key>/``) become blobs under <key>/."""
        old = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fn in filenames:
                if not fn.startswith("."):
                    rel = os.path.relpath(os.path.join(dirpath, fn), self.root)
                    old[rel] = (self.root / rel).read_bytes()
        dirs = self.root / ".dirs"
        blobs = {}
        if dirs.is_dir():
            for dirpath, dirnames, filenames in os.walk(dirs):
                for fn in filenames:
                    if not fn.startswith("."):
                        rel = os.path.relpath(os.path.join(dirpath, fn), dirs)
                        blobs[rel] = (dirs / rel).read_bytes()
        self._clean_staged()
        rev = self._current_revision() + 1
        puts = {}
        for key, raw in old.items():
            puts[storekeys.upgrade_v1(key, self.host)] = _header(rev) + _parse(raw).value
        for key, raw in blobs.items():
            puts[key] = _header(rev) + raw
        deletes = [k for k in old if k not in puts]
        if old or blobs:
            log.warning("upgrading the state store %s to layout %d (%d keys, %d vTPM files)",
                        self.root, LAYOUT, len(old), len(blobs))
        self._commit(rev, puts, deletes, rmtrees=[".dirs"] if dirs.exists() else [],
                     dots={".layout": f"{LAYOUT}\n".encode()})


def _unlink(p: Path) -> bool:
    try:
        p.unlink()
        return True
    except FileNotFoundError:
        return False
