"""Atomic writes of ordinary files: pid files, the HTTP token, certificates,
caches, generated scripts and configuration.

These files are not xend's persistent state (that lives in
:mod:`pyxen.store`, behind keys), but a torn one is still harmful — a half
certificate, a pid file naming nobody — so they are written the same way:
temp file beside the target, fsync, rename, fsync of the directory.  Kept
apart from the store so that "who imports the store" is the list of modules
that keep state.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def _atomic(path: Path, fill, mode: int) -> None:
    """Create *path* from *fill(file)* so readers see the old or the new file,
    never a torn one."""
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
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in *directory* durable (best effort: some
    filesystems refuse to open a directory for fsync)."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
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
