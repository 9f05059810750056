"""CPU scheduling for domains with cgroups: Xen's credit weight and cap.

One cgroup per domain holds its QEMU process, at the top of the hierarchy
(``pyxen-<uuid>``), not under a common parent: a parent would be one
entity for the scheduler, so all domains together would weigh as much as
any single process of the host.  A domain with the default weight and no
cap has no group at all (see ``apply``).  The credit scheduler's
``weight`` (default 256) becomes the group's CPU share and ``cap`` (% of one
CPU, 0 = none) a CFS bandwidth quota.  Works with cgroup v1 (the ``cpu``
controller mounted on its own, as here) and v2 (the unified hierarchy of
modern hosts).  The mapping keeps ratios: weight 512 gets twice the CPU of
weight 256 under contention, on both versions.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("pyxen.cgroups")

ROOT = Path(os.environ.get("PYXEN_CGROUP_ROOT", "/sys/fs/cgroup"))
PERIOD_US = 100_000
GROUP = "pyxen"
DEFAULT_WEIGHT = 256


class CgroupError(RuntimeError):
    pass


def version() -> int | None:
    if (ROOT / "cpu" / "cpu.shares").exists():
        return 1
    if (ROOT / "cgroup.controllers").exists() and "cpu" in (ROOT / "cgroup.controllers").read_text().split():
        return 2
    return None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise CgroupError(f"cannot write {value!r} to {path}: {e.strerror}") from None


def group_dir(uuid: str) -> Path | None:
    v = version()
    if v == 1:
        return ROOT / "cpu" / f"{GROUP}-{uuid}"
    if v == 2:
        return ROOT / f"{GROUP}-{uuid}"
    return None


def _ensure(uuid: str) -> Path:
    v = version()
    d = group_dir(uuid)
    if d is None:
        raise CgroupError("no cgroup cpu controller on this host")
    if v == 2:
        # Delegate the cpu controller down to our groups.
        ctl = ROOT / "cgroup.subtree_control"
        if "cpu" not in ctl.read_text().split():
            _write(ctl, "+cpu")
    d.mkdir(exist_ok=True)
    return d


def weight_to_v1(weight: int) -> int:
    return max(2, min(262144, weight * 4))            # 256 -> 1024, the default share


def weight_to_v2(weight: int) -> int:
    return max(1, min(10000, round(weight * 100 / 256)))   # 256 -> 100, the default weight


def apply(uuid: str, pid: int, weight: int, cap: int, period_us: int = PERIOD_US) -> None:
    """Put *pid* (all its threads) in the domain's group with weight and cap
    (cap: % of one CPU per *period_us*; SEDF's period maps onto it).

    A domain with the default weight and no cap gets no group until it is
    given other values: it then competes for the CPU as any process of the
    host does, as plain QEMU would.  In a group its threads would share the
    one group's weight, where plain QEMU's threads each weigh as much: beside
    a busy process a booting guest ran about 20 % slower than plain QEMU did
    (issue 17, ``bench/README.md``)."""
    if weight == DEFAULT_WEIGHT and cap <= 0:
        existing = group_dir(uuid)
        if existing is None or not existing.exists():
            return
    d = _ensure(uuid)
    quota = cap * period_us // 100
    if version() == 1:
        _write(d / "cpu.shares", str(weight_to_v1(weight)))
        # Lower the quota before changing the period so the pair stays valid.
        _write(d / "cpu.cfs_quota_us", "-1")
        _write(d / "cpu.cfs_period_us", str(period_us))
        _write(d / "cpu.cfs_quota_us", str(quota) if cap > 0 else "-1")
    else:
        _write(d / "cpu.weight", str(weight_to_v2(weight)))
        _write(d / "cpu.max", f"{quota} {period_us}" if cap > 0 else f"max {period_us}")
    procs = (d / "cgroup.procs").read_text().split()
    if str(pid) not in procs:
        _write(d / "cgroup.procs", str(pid))


def read(uuid: str) -> tuple[int, int] | None:
    """(weight, cap) as enforced now, or None if the group does not exist."""
    d = group_dir(uuid)
    if d is None or not d.exists():
        return None
    if version() == 1:
        shares = int((d / "cpu.shares").read_text())
        quota = int((d / "cpu.cfs_quota_us").read_text())
        period = int((d / "cpu.cfs_period_us").read_text())
        return shares // 4, (quota * 100 // period if quota > 0 else 0)
    w = int((d / "cpu.weight").read_text())
    q, p = (d / "cpu.max").read_text().split()
    return round(w * 256 / 100), (0 if q == "max" else int(q) * 100 // int(p))


def remove(uuid: str, timeout: float = 2.0) -> None:
    """Remove the domain's group once its last exiting thread has left it."""
    d = group_dir(uuid)
    if d is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            # EBUSY while the kernel is still detaching QEMU's exiting threads.
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                log.warning("cannot remove cgroup %s: %s", d, e.strerror)
                return
        time.sleep(0.01)
