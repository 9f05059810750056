"""The block-device sharing guard (the manual's "Warning: Block device sharing").

Two domains writing one filesystem, or a domain writing a filesystem the
host has mounted read-write, corrupt it silently.  Before a disk is given
to a domain, the guard works out what the target *is* — an inode, a block
device number, the file behind a loop device, the partitions of a disk — so
a symlink, a second path or a loop device over the same image all count as
the same thing, and then applies Xen's rule:

* a read-write export is refused when the target is mounted read-write on
  the host or exported at all (even read-only) to any domain;
* a read-only export is refused when another domain has it read-write
  (the host's own read-write mounts only stop read-write exports);
* mode ``w!`` skips the check, leaving a warning in xend's log;
* read-only sharing is allowed.

Pure functions over ``os.stat``, ``/proc/self/mountinfo`` and sysfs; the
caller supplies every disk already handed out (every domain of the host,
whatever its state).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..config.specs import DiskSpec

log = logging.getLogger("pyxen.storage")

LOOP_MAJOR = 7
SYS_DEV_BLOCK = Path("/sys/dev/block")
MOUNTINFO = Path("/proc/self/mountinfo")


class SharingError(Exception):
    """A disk may not be exported; the message names it and its user."""


# ------------------------------------------------------------- identity
def _file_id(st: os.stat_result) -> str:
    return f"file:{st.st_dev}:{st.st_ino}"


def _blk_id(rdev: int) -> str:
    return f"blk:{os.major(rdev)}:{os.minor(rdev)}"


def _sys_of(rdev: int) -> Path:
    return SYS_DEV_BLOCK / f"{os.major(rdev)}:{os.minor(rdev)}"


def _loop_backing(rdev: int) -> str | None:
    """The file behind a loop device, if it is one that is bound."""
    if os.major(rdev) != LOOP_MAJOR:
        return None
    try:
        return (_sys_of(rdev) / "loop" / "backing_file").read_text().strip() or None
    except OSError:
        return None


def _loops() -> Iterable[tuple[int, str]]:
    """(rdev, backing file) of every bound loop device."""
    try:
        entries = list(SYS_DEV_BLOCK.iterdir())
    except OSError:
        return
    for e in entries:
        maj, _, mi = e.name.partition(":")
        if maj != str(LOOP_MAJOR):
            continue
        try:
            backing = (e / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing:
            yield os.makedev(int(maj), int(mi)), backing


def _related_blocks(rdev: int) -> set[int]:
    """The device, its whole disk (for a partition) and its partitions (for a disk)."""
    out = {rdev}
    sysdir = _sys_of(rdev)
    try:
        real = sysdir.resolve()
        if (real / "partition").exists():
            parent = (real.parent / "dev").read_text().strip()
            maj, mi = parent.split(":")
            out.add(os.makedev(int(maj), int(mi)))
        for child in real.iterdir():
            if (child / "partition").exists():
                maj, mi = (child / "dev").read_text().strip().split(":")
                out.add(os.makedev(int(maj), int(mi)))
    except (OSError, ValueError):
        pass
    return out


def identities(target: str) -> set[str]:
    """Everything that names the same storage as ``target``; empty if it cannot be seen.

    A file is its inode plus every loop device bound to it; a block device
    is its number, its disk/partitions and, for a loop device, its file.
    """
    try:
        st = os.stat(target)   # follows symlinks: /dev/vg/lv, aliases
    except OSError:
        return set()
    ids: set[str] = set()
    if stat.S_ISBLK(st.st_mode):
        for rdev in _related_blocks(st.st_rdev):
            ids.add(_blk_id(rdev))
            backing = _loop_backing(rdev)
            if backing:
                try:
                    ids.add(_file_id(os.stat(backing)))
                except OSError:
                    pass
        return ids
    ids.add(_file_id(st))
    for rdev, backing in _loops():
        try:
            bst = os.stat(backing)
        except OSError:
            continue
        if (bst.st_dev, bst.st_ino) == (st.st_dev, st.st_ino):
            ids.add(_blk_id(rdev))
    return ids


def shared_ids(target: str) -> set[str]:
    """Names of ``target`` that mean the same storage on every host of a
    cluster (the claims in etcd are keyed by them): a regular file by its
    canonical path (the shared mount is at the same path everywhere), a
    block device by what its hardware or device mapper calls it (a disk's
    WWID or serial, an LV's dm uuid) — never a device number or inode,
    which are one host's.  Empty if it has none (a host-local device)."""
    try:
        st = os.stat(target)
    except OSError:
        return set()
    if stat.S_ISREG(st.st_mode):
        return {f"path:{os.path.realpath(target)}"}
    if not stat.S_ISBLK(st.st_mode):
        return set()
    out = set()
    sysd = _sys_of(st.st_rdev)
    for rel, kind in (("dm/uuid", "dm"), ("device/wwid", "wwid"), ("wwid", "wwid"), ("device/serial", "serial")):
        try:
            v = (sysd / rel).read_text().strip()
        except OSError:
            continue
        if v:
            # A partition carries its disk's id plus its number.
            part = ""
            try:
                part = (sysd / "partition").read_text().strip()
            except OSError:
                pass
            out.add(f"{kind}:{v}" + (f":part{part}" if part else ""))
    return out


# --------------------------------------------------------------- mounts
def rw_mounts(mountinfo: str | None = None) -> dict[str, str]:
    """blk:<maj>:<min> -> mount point, for every filesystem mounted read-write."""
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text()
        except OSError:
            return {}
    out: dict[str, str] = {}
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        f = pre.split()
        if not sep or len(f) < 6:
            continue
        mount_opts = f[5].split(",")
        super_opts = post.split()[2].split(",") if len(post.split()) > 2 else []
        if "rw" in mount_opts and "ro" not in super_opts:
            try:
                maj, mi = (int(x) for x in f[2].split(":"))
            except ValueError:
                continue
            out.setdefault(f"blk:{maj}:{mi}", f[4])
    return out


# ----------------------------------------------------------------- rule
@dataclass
class Export:
    """A disk some domain already has."""
    domain: str
    disk: DiskSpec
    ids: set[str]


def exports(disks: Iterable[tuple[str, DiskSpec]]) -> list[Export]:
    out = []
    for name, d in disks:
        if d.target and d.kind in ("phy", "file", "tap"):
            out.append(Export(name, d, identities(d.target)))
    return out


def check(domain: str, new: list[DiskSpec], existing: list[Export],
          mounts: dict[str, str] | None = None) -> list[str]:
    """Refuse (SharingError) what may not be exported; return w! warnings to log.

    ``new`` are the disks about to be given to ``domain`` (checked against
    each other too); ``existing`` are the disks every domain has now.
    """
    mounts = rw_mounts() if mounts is None else mounts
    warnings: list[str] = []
    seen = list(existing)
    for d in new:
        if not d.target or d.kind not in ("phy", "file", "tap"):
            continue
        ids = identities(d.target)
        what = f"{d.uname} ({d.vdev})"
        problem = None
        if not d.readonly:
            mp = next((mounts[i] for i in ids if i in mounts), None)
            if mp:
                problem = f"it is mounted read-write on the host at {mp}"
        if problem is None:
            for e in seen:
                if not ids & e.ids:
                    continue
                if d.readonly and e.disk.readonly:
                    continue        # read-only sharing is fine
                who = "this domain" if e.domain == domain else f"domain {e.domain}"
                problem = (f"it is already exported {'read-write' if not e.disk.readonly else 'read-only'} "
                           f"to {who} as {e.disk.vdev} ({e.disk.uname})")
                break
        if problem:
            if d.mode == "w!":
                warnings.append(f"{domain}: disk {what}: {problem}; exported anyway because of mode w!")
            else:
                raise SharingError(f"Disk {what} cannot be given to domain {domain}: {problem} "
                                   f"(use mode 'w!' to override)")
        seen.append(Export(domain, d, ids))
    return warnings
