"""QEMU as an unprivileged user (beyond Xen): who it runs as, and the
descriptors xend opens for it.

With ``(qemu-user NAME)`` every QEMU drops to that user; with
``(qemu-uid-base N)`` each domain's QEMU gets its own uid and gid N+domid,
so one QEMU cannot reach another's /proc entries, files or taps.  QEMU
starts as root (``-runas``), opens what its command line names — the
sockets in its 0700 run dir, its logs, the kernel, the taps — and then
drops to the user before the guest runs.  Anything it opens later (a
hot-plugged disk, a save or dump file) xend opens and hands over as a
file descriptor, so the disk files themselves stay root:0600 and the
QEMU user never needs any path.

Without either option QEMU runs as root, as in Xen (the default).
"""

from __future__ import annotations

import os
import pwd

from ..config.specs import DiskSpec
from ..hypervisor.qemu.monitor import Monitor
from .errors import InvalidRequest, XendError

# fdset ids of disks given on the command line are 1..n; hot-plugged ones
# take the next free id (QEMU's own allocator).
OPAQUE_PREFIX = "pyxen-disk:"


def identity(config, domid: int) -> tuple[int, int] | None:
    """The (uid, gid) QEMU of domain *domid* runs as; None for root."""
    base = config.get("qemu-uid-base") or 0
    if base:
        uid = base + domid
        if not 0 < uid < 2**32 - 1:
            raise XendError(f"(qemu-uid-base {base}) + domid {domid} is not a valid uid")
        return uid, uid
    user = str(config.get("qemu-user") or "").strip()
    if not user or user in ("root", "0"):
        return None
    if ":" in user or user.isdigit():
        uid_s, _, gid_s = user.partition(":")
        try:
            uid, gid = int(uid_s), int(gid_s or uid_s)
        except ValueError:
            raise XendError(f"(qemu-user {user}): expected a user name, a uid or uid:gid") from None
        return uid, gid
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise XendError(f"(qemu-user {user}): no such user on this host") from None
    return pw.pw_uid, pw.pw_gid


def runas(ident: tuple[int, int] | None) -> str | None:
    """QEMU's -runas argument (it takes uid:gid as well as a name)."""
    return None if ident is None else f"{ident[0]}:{ident[1]}"


def passes_fd(d: DiskSpec) -> bool:
    """Whether xend opens this disk for QEMU: every local raw file or device.

    Image formats (qcow2, ...) keep their path: QEMU resolves a relative
    backing file against the image's name, which for /dev/fdset/N is no
    directory at all.  Named on the command line they are opened while
    QEMU is still root; hot-plugged ones must be readable by its user."""
    return bool(d.target) and d.kind != "nbd" and d.fmt == "raw"


def open_disk(d: DiskSpec) -> int:
    """Open disk *d*'s target the way QEMU would, for QEMU to inherit."""
    flags = (os.O_RDONLY if d.readonly else os.O_RDWR) | os.O_CLOEXEC
    try:
        return os.open(d.target, flags)
    except OSError as e:
        raise InvalidRequest(f"Cannot open disk {d.uname} ({d.vdev}): {e.strerror}") from None


class DiskFds:
    """Descriptors of a domain's disks for its QEMU command line: ``-add-fd``
    fdset *n* per disk.  Close once QEMU has started (it keeps copies)."""

    def __init__(self, disks: list[DiskSpec]):
        self.sets: dict[str, tuple[int, int]] = {}   # vdev -> (fd, fdset id)
        try:
            for d in disks:
                if passes_fd(d):
                    self.sets[d.vdev] = (open_disk(d), len(self.sets) + 1)
        except BaseException:
            self.close()
            raise

    def fds(self) -> list[int]:
        return [fd for fd, _ in self.sets.values()]

    def close(self) -> None:
        for fd, _ in self.sets.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.sets = {}


def fdset_path(fdset: int) -> str:
    return f"/dev/fdset/{fdset}"


async def add_disk_fd(mon: Monitor, d: DiskSpec) -> int | None:
    """Hand QEMU an open descriptor of *d* (QMP add-fd); returns its fdset
    id, or None for a disk QEMU opens by path (see passes_fd)."""
    if not passes_fd(d):
        return None
    fd = open_disk(d)
    try:
        return await mon.add_fd(fd, OPAQUE_PREFIX + d.vdev)
    finally:
        os.close(fd)


async def remove_disk_fd(mon: Monitor, vdev: str) -> None:
    """Drop the fdset(s) xend gave QEMU for disk *vdev* (after blockdev-del)."""
    for s in await mon.fdsets():
        if any(f.get("opaque") == OPAQUE_PREFIX + vdev for f in s.get("fds", [])):
            await mon.remove_fdset(s["fdset-id"])
