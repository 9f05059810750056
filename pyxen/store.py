"""The one place persistent host and domain state is read and written.

Everything that must survive a crash of xend goes through a :class:`Store`:
keys are slash-separated names (``domains/<uuid>/config``), values are bytes.
The file implementation writes atomically (temp file, fsync, rename, fsync
of the directory) so a crash leaves either the old or the new value, never
half of one.  A later multi-host pool replaces it with an etcd-backed store
with the same interface, so nothing else in pyxen touches state files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger("pyxen.store")


class StoreError(Exception):
    pass


class Store:
    """Interface: a flat key/value namespace with atomic single-key writes."""

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def put(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def keys(self, prefix: str = "") -> list[str]:
        raise NotImplementedError

    def quarantine(self, key: str, reason: str) -> None:
        """Set a corrupt value aside so it is kept for inspection, not fatal."""
        raise NotImplementedError

    def directory(self, key: str) -> Path:
        """A private local directory (mode 0700, created if missing) for
        state that is many files another program writes itself, such as a
        vTPM's swtpm state.  It lives with the store's values but is not a
        value: keys() does not list its files.  A networked store keeps a
        local copy here and syncs it."""
        raise NotImplementedError

    def remove_directory(self, key: str) -> None:
        raise NotImplementedError

    # JSON convenience, used for most records.
    def get_json(self, key: str, default=None):
        raw = self.get(key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except ValueError as e:
            self.quarantine(key, f"not valid JSON: {e}")
            return default

    def put_json(self, key: str, value) -> None:
        self.put(key, json.dumps(value, indent=1, sort_keys=True).encode())


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise StoreError(f"invalid store key {key!r}")


def _atomic(path: Path, fill, mode: int) -> None:
    """Create *path* from *fill(file)* so readers see the old or the new file,
    never a torn one: temp file beside it, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write *data* to *path* atomically."""
    _atomic(path, lambda f: f.write(data), mode)


def atomic_copy(src: Path, dest: Path, mode: int = 0o644) -> None:
    """Copy *src* to *dest* atomically, streaming (no whole-file read)."""
    def fill(f):
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, f, 1 << 20)
    _atomic(dest, fill, mode)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class FileStore(Store):
    """A directory tree; one file per key."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None

    def put(self, key: str, value: bytes) -> None:
        try:
            atomic_write(self._path(key), value)
        except OSError as e:
            raise StoreError(f"cannot write state {key}: {e.strerror or e}") from e

    def delete(self, key: str) -> None:
        p = self._path(key)
        try:
            p.unlink()
        except FileNotFoundError:
            return
        # Drop directories the key left empty, up to the store root.
        d = p.parent
        while d != self.root:
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent

    def keys(self, prefix: str = "") -> list[str]:
        base = self.root
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fn in filenames:
                if fn.startswith("."):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, fn), base)
                if rel.startswith(prefix):
                    out.append(rel)
        return sorted(out)

    def _dir_path(self, key: str) -> Path:
        _check_key(key)
        # Under a dot-directory: keys() skips those, so the files another
        # program keeps there never look like values.
        return self.root / ".dirs" / key

    def directory(self, key: str) -> Path:
        p = self._dir_path(key)
        try:
            p.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(p, 0o700)
        except OSError as e:
            raise StoreError(f"cannot make state directory {key}: {e.strerror or e}") from e
        return p

    def remove_directory(self, key: str) -> None:
        shutil.rmtree(self._dir_path(key), ignore_errors=True)

    def quarantine(self, key: str, reason: str) -> None:
        p = self._path(key)
        dest = self.root / ".corrupt" / f"{key.replace('/', '_')}.{int(time.time())}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(p, dest)
            log.error("state %s is corrupt (%s); moved to %s", key, reason, dest)
        except FileNotFoundError:
            pass
