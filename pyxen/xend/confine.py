"""QEMU confined (beyond Xen, as libvirt does by default): who each QEMU
runs as, what it may do, and the descriptors xend opens for it.

By default each domain's QEMU runs as its own uid and gid,
``qemu-uid-base`` (1900000000) + domid, from a range no real account
uses (checked when xend starts), with every capability dropped — the
bounding set too — and NoNewPrivs, under a full seccomp sandbox (no
spawning, no privilege changes).  ``(qemu-user U)`` runs every QEMU as one
user instead; ``(qemu-user root)`` is the opt-out (xend warns).

Such a QEMU can open nothing of the host's: xend starts it in its 0700
run directory (owned by its uid) where it makes its sockets, and opens
everything else for it — each disk and each layer of an image's backing
chain (``-add-fd`` + ``/dev/fdset/N``), the kernel and initrd
(``/proc/self/fd/N``), the console log; later, hot-plugged disks, save,
restore, migration and dump files go over QMP (``add-fd``/``getfd``).

What cannot work confined runs as root with only what it needs
(``root_reason``): PCI passthrough (``/dev/vfio``, locked guest memory)
and an SDL window (the user's X display and its cookie).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
from pathlib import Path

from ..config.specs import DiskSpec
from ..hypervisor.qemu.monitor import Monitor
from .errors import InvalidRequest, XendError

# fdset ids of disks given on the command line are 1..n; hot-plugged ones
# take the next free id (QEMU's own allocator).
OPAQUE_PREFIX = "pyxen-disk:"
# How many ids of the range xend checks for real accounts at start: one
# per domid it may hand out.
RANGE = 65536
# A backing chain deeper than this is refused (QEMU's own limit is far
# higher, but no sane image has more layers; each costs a descriptor).
MAX_LAYERS = 16
# Capabilities a root QEMU keeps for PCI passthrough: VFIO pins all guest
# memory (RLIMIT_MEMLOCK, or CAP_IPC_LOCK).
PCI_CAPS = ("ipc_lock", "sys_resource")


def root_reason(cfg) -> str | None:
    """Why this domain's QEMU must run as root, or None."""
    if cfg is None:
        return None
    if getattr(cfg, "pci", None):
        return "PCI passthrough (/dev/vfio)"
    h = getattr(cfg, "hvm", None) or {}
    if cfg.builder == "hvm" and h.get("sdl"):
        return "sdl=1 (the X display)"
    return None


def identity(config, domid: int, cfg=None) -> tuple[int, int] | None:
    """The (uid, gid) QEMU of domain *domid* runs as; None for root."""
    if root_reason(cfg):
        return None
    user = str(config.get("qemu-user") or "").strip()
    if user in ("root", "0", "0:0"):
        return None
    if user:
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
    base = int(config.get("qemu-uid-base") or 0)
    if domid >= RANGE or base <= 0:
        raise XendError(f"(qemu-uid-base {base}) + domid {domid} is outside the reserved range")
    uid = base + domid
    if not 0 < uid < 2**32 - 1:
        raise XendError(f"(qemu-uid-base {base}) + domid {domid} is not a valid uid")
    return uid, uid


def check_config(config) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the confinement settings, for ``xend start``:
    a uid range that holds a real account would hand QEMUs its files."""
    user = str(config.get("qemu-user") or "").strip()
    if user in ("root", "0", "0:0"):
        return [], ["(qemu-user root): QEMU runs as root, not confined to its own uid"]
    if user:
        return [], []
    base = int(config.get("qemu-uid-base") or 0)
    if not 1000 <= base <= 2**32 - 2 - RANGE:
        return [f"(qemu-uid-base {base}): must be between 1000 and {2**32 - 2 - RANGE}"], []
    top = base + RANGE
    # One pass over the account databases rather than 65536 getpwuid calls.
    for pw in pwd.getpwall():
        if base <= pw.pw_uid < top:
            return [f"(qemu-uid-base {base}): uid {pw.pw_uid} of its range {base}-{top - 1} "
                    f"is the real account {pw.pw_name!r}"], []
    for gr in grp.getgrall():
        if base <= gr.gr_gid < top:
            return [f"(qemu-uid-base {base}): gid {gr.gr_gid} of its range {base}-{top - 1} "
                    f"is the real group {gr.gr_name!r}"], []
    return [], []


def launcher(ident: tuple[int, int] | None, cfg=None) -> list[str]:
    """The argv prefix that starts QEMU with its identity: util-linux's
    setpriv does, between fork and exec, what libvirt does in its own
    child (groups, gid, uid, bounding set, no_new_privs), which Python
    cannot do safely after a fork in a threaded xend."""
    if ident is None:
        keep = PCI_CAPS if cfg is not None and getattr(cfg, "pci", None) else ()
        caps = "-all" + "".join(f",+{c}" for c in keep)
        return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--no-new-privs", "--"]
    uid, gid = ident
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def write_for_qemu(path: Path, data: bytes, ident: tuple[int, int] | None) -> None:
    """A file of secrets (keys, certificates) in a run dir that only this
    domain's QEMU may read: 0600, never through a link, owned by *ident*."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        if ident is not None:
            os.fchown(fd, *ident)
    finally:
        os.close(fd)


def open_disk(d: DiskSpec) -> int:
    """Open disk *d*'s target the way QEMU would, for QEMU to inherit."""
    return open_file(d.target, d.readonly, f"disk {d.uname} ({d.vdev})")


def open_file(path: str, readonly: bool, what: str) -> int:
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except OSError as e:
        raise InvalidRequest(f"Cannot open {what}: {e.strerror}") from None


def passes_fd(d: DiskSpec) -> bool:
    """Whether xend opens this disk for QEMU: every local file or device."""
    return bool(d.target) and d.kind != "nbd"


def backing_chain(d: DiskSpec) -> list[tuple[str, str]]:
    """(path, format) of each backing layer below image *d*, top first.

    Read one layer at a time with ``qemu-img info`` (which does not open
    the backing file), so xend decides what is opened: only local files."""
    if d.fmt == "raw":
        return []
    out: list[tuple[str, str]] = []
    path, fmt = d.target, d.fmt
    while True:
        try:
            res = subprocess.run(["qemu-img", "info", "--output=json", "-U", "-f", fmt, path],
                                 capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise InvalidRequest(f"disk {d.uname} ({d.vdev}): cannot read {path}: {e}") from None
        if res.returncode != 0:
            err = (res.stderr.strip().splitlines() or ["qemu-img failed"])[-1]
            raise InvalidRequest(f"disk {d.uname} ({d.vdev}): {err.removeprefix('qemu-img: ')}")
        info = json.loads(res.stdout)
        nxt = info.get("full-backing-filename") or info.get("backing-filename")
        if not nxt:
            return out
        if not nxt.startswith("/") or nxt.startswith("json:"):
            raise InvalidRequest(f"disk {d.uname} ({d.vdev}): backing file {nxt!r} of {path} "
                                 "is not a local file")
        if len(out) >= MAX_LAYERS:
            raise InvalidRequest(f"disk {d.uname} ({d.vdev}): more than {MAX_LAYERS} backing layers")
        fmt = info.get("backing-filename-format") or _probe_format(nxt)
        path = nxt
        out.append((path, fmt))


def _probe_format(path: str) -> str:
    res = subprocess.run(["qemu-img", "info", "--output=json", "-U", path], capture_output=True,
                         text=True, timeout=30, stdin=subprocess.DEVNULL)
    try:
        return json.loads(res.stdout)["format"]
    except (ValueError, KeyError):
        return "raw"


class QemuFds:
    """Descriptors xend opens for one QEMU start: ``-add-fd`` fdsets (disk
    layers, the console log) and plain inherited ones (kernel, initrd).
    Close once QEMU has started (it keeps its own copies)."""

    def __init__(self):
        self.adds: list[tuple[int, int, str]] = []       # (fd, fdset id, opaque)
        self.plain: list[int] = []
        # vdev -> [fdset of the image, fdsets and formats of its backing layers]
        self.disks: dict[str, tuple[int, list[tuple[int, str]]]] = {}

    def fds(self) -> list[int]:
        return [fd for fd, _, _ in self.adds] + self.plain

    def add(self, fd: int, opaque: str) -> int:
        n = len(self.adds) + 1
        self.adds.append((fd, n, opaque))
        return n

    def add_disks(self, disks: list[DiskSpec]) -> None:
        for d in disks:
            if passes_fd(d):
                top = self.add(open_disk(d), OPAQUE_PREFIX + d.vdev)
                layers = [(self.add(open_file(p, True, f"backing file {p} of {d.vdev}"), OPAQUE_PREFIX + d.vdev), f)
                          for p, f in backing_chain(d)]
                self.disks[d.vdev] = (top, layers)

    def file_arg(self, path: str, what: str) -> str:
        """A file QEMU reads once by name (kernel, initrd): /proc/self/fd/N
        of a descriptor xend opened.  Reopening through /proc still checks
        the file's own mode, so a file others cannot read is copied into a
        sealed memfd (costing its size in memory while QEMU runs)."""
        fd = open_file(path, True, what)
        if not os.fstat(fd).st_mode & stat.S_IROTH:
            mfd = os.memfd_create("pyxen-" + what.split()[0], os.MFD_CLOEXEC)
            with os.fdopen(os.dup(fd), "rb") as src:
                while chunk := src.read(1 << 20):
                    os.write(mfd, chunk)
            os.close(fd)
            os.fchmod(mfd, 0o444)
            fd = mfd
        self.plain.append(fd)
        return f"/proc/self/fd/{fd}"

    def log_arg(self, path) -> str:
        """An append-only log QEMU writes (the console log), as an fdset."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return f"/dev/fdset/{self.add(fd, 'pyxen-log')}"

    def close(self) -> None:
        for fd in self.fds():
            try:
                os.close(fd)
            except OSError:
                pass
        self.adds, self.plain, self.disks = [], [], {}


def fdset_path(fdset: int) -> str:
    return f"/dev/fdset/{fdset}"


async def add_disk_fds(mon: Monitor, d: DiskSpec) -> tuple[int | None, list[tuple[int, str]]]:
    """Hand QEMU open descriptors of *d* and its backing layers (QMP add-fd):
    (fdset of the image, [(fdset, format) of each layer]); (None, []) for
    a disk QEMU reaches itself (nbd)."""
    if not passes_fd(d):
        return None, []
    chain = backing_chain(d)
    opaque = OPAQUE_PREFIX + d.vdev
    sets: list[int] = []
    for path, ro, what in [(d.target, d.readonly, f"disk {d.uname} ({d.vdev})")] + \
            [(p, True, f"backing file {p} of {d.vdev}") for p, _ in chain]:
        fd = open_file(path, ro, what)
        try:
            sets.append(await mon.add_fd(fd, opaque))
        finally:
            os.close(fd)
    return sets[0], [(s, f) for s, (_, f) in zip(sets[1:], chain)]


async def remove_disk_fd(mon: Monitor, vdev: str) -> None:
    """Drop the fdset(s) xend gave QEMU for disk *vdev* (after blockdev-del)."""
    for s in await mon.fdsets():
        if any(f.get("opaque") == OPAQUE_PREFIX + vdev for f in s.get("fds", [])):
            await mon.remove_fdset(s["fdset-id"])
