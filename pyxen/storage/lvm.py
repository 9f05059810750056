"""LVM helpers for ``phy:vg/lv`` disks: device-mapper presence and CoW snapshots.

Xen's manual (§6.3) clones a guest root by snapshotting a logical volume
(``lvcreate -s``) and exporting the snapshot.  LVM needs the kernel's
device-mapper; where it is missing the helpers say so plainly instead of
failing half-way.
"""

from __future__ import annotations

import re
import shutil
import subprocess

_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$")


class LvmError(Exception):
    pass


def dm_available() -> tuple[bool, str]:
    """(usable, why not): device-mapper answers ``dmsetup version``."""
    if shutil.which("dmsetup") is None:
        return False, "dmsetup is not installed"
    res = subprocess.run(["dmsetup", "version"], capture_output=True, text=True)
    if res.returncode != 0:
        return False, "dmsetup version: " + (res.stderr.strip().splitlines() or ["failed"])[-1]
    return True, ""


def missing_hint(target: str) -> str:
    """Why a ``phy:`` path that does not exist may be missing: for one that
    looks like a logical volume (/dev/<vg>/<lv>), whether device-mapper (and
    so LVM) is there at all.  '' for other paths."""
    parts = target.split("/")
    if len(parts) != 4 or parts[:2] != ["", "dev"] or not all(_NAME.match(p) for p in parts[2:]) \
            or parts[2] in ("disk", "mapper", "block", "fd", "shm", "pts", "net", "input"):
        return ""
    ok, why = dm_available()
    if not ok:
        return (f": it looks like the LVM logical volume {parts[2]}/{parts[3]}, but device-mapper is "
                f"not available on this host ({why}), so no LVM volume can exist here")
    return f": no logical volume {parts[3]} in volume group {parts[2]} (see lvs)"


def lv_path(vg: str, lv: str) -> str:
    for what, n in (("volume group", vg), ("logical volume", lv)):
        if not _NAME.match(n):
            raise LvmError(f"bad {what} name {n!r}")
    return f"/dev/{vg}/{lv}"


def snapshot(vg: str, origin: str, name: str, size: str = "1G") -> str:
    """Create a copy-on-write snapshot ``vg/name`` of ``vg/origin``; return its path."""
    lv_path(vg, origin)
    path = lv_path(vg, name)
    ok, why = dm_available()
    if not ok:
        raise LvmError(f"cannot snapshot {vg}/{origin}: device-mapper is not available ({why})")
    if shutil.which("lvcreate") is None:
        raise LvmError("cannot snapshot: lvcreate (package lvm2) is not installed")
    res = subprocess.run(["lvcreate", "-q", "-s", "-L", size, "-n", name, f"{vg}/{origin}"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise LvmError(f"lvcreate -s {vg}/{origin} failed: {res.stderr.strip()}")
    return path
