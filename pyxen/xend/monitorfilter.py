"""Which ``xm qemu-monitor`` (HMP) commands reach QEMU: none that starts a
program or opens a host path, unless ``(qemu-monitor-host-access yes)``.

QEMU is confined (xend/confine.py), so most of these would fail anyway
(its sandbox kills a spawn, its uid opens nothing); refusing them here
gives the user one line instead of a dead domain, and holds for a QEMU
that runs as root (PCI passthrough, ``(qemu-user root)``).

``screendump FILE`` is not refused: xend writes FILE and QEMU gets a
descriptor (xend/screendump.py).  Commands that always name a host file
are refused outright; for the
mixed ones (``migrate``, ``drive_add``, ``netdev_add``, ``chardev-add``,
``object_add``, ``device_add``, ``change``, ``nbd_server_start``) the
arguments are checked, allowing only the forms that open nothing of the
host's.  Where a form cannot be read with certainty the command is
refused: an error a user can lift beats a hole.
"""

from __future__ import annotations

import re

__all__ = ["refusal"]

# Commands whose every form writes or reads a host path, or starts a program.
ALWAYS = {
    "dump-guest-memory": "writes a host file",
    "pmemsave": "writes a host file",
    "memsave": "writes a host file",
    "wavcapture": "writes a host file",
    "logfile": "writes a host file",
    "trace-file": "writes a host file",
    "snapshot_blkdev": "creates a host file",
    "drive_mirror": "writes a host file",
    "drive_backup": "writes a host file",
    "gdbserver": "opens a host device or socket",
    "usb_add": "opens a host device",
    "qemu-io": "is a raw block debugger",
    "host_net_add": "may start a script",
}

# Migration URIs that open nothing of the host's (fd: is a descriptor xend
# handed over; tcp/rdma reach the network as xm migrate does).
MIGRATE_OK = re.compile(r"^(tcp|rdma|fd):", re.I)
MIGRATE_CMDS = {"migrate", "migrate_incoming"}

# Option keys that name a host path or a program, in any -object,
# -device, -netdev, -chardev or -drive option list.
PATH_KEYS = {"file", "filename", "path", "dir", "mem-path", "script", "downscript", "helper",
             "sysfsdev", "hostdevice", "romfile", "vhostdev", "sock", "logfile", "fd", "fds",
             "vhostfd", "vhostfds", "device", "keyring", "mountpoint"}
# ... except these harmless values ("no" script; an empty romfile).
HARMLESS = {("script", "no"), ("downscript", "no"), ("romfile", "")}
# Types that open host resources whatever their options say.
BAD_TYPES = {
    "netdev_add": {"bridge", "vde", "vhost-vdpa", "vhost-user", "l2tpv3", "af-xdp", "netmap"},
    "chardev-add": {"file", "pipe", "serial", "tty", "parallel", "parport", "stdio", "spicevmc",
                    "spiceport", "qemu-vdagent"},
    "chardev-change": {"file", "pipe", "serial", "tty", "parallel", "parport", "stdio", "spicevmc",
                       "spiceport", "qemu-vdagent"},
    "object_add": {"memory-backend-file", "filter-dump", "rng-random", "authz-listfile", "authz-pam",
                   "can-host-socketcan", "input-linux", "cryptodev-vhost-user"},
    "device_add": {"loader", "usb-host", "vfio-pci", "vfio-platform", "vfio-ccw", "vfio-ap", "vhost-scsi",
                   "vhost-vsock-pci", "vhost-user-fs-pci", "vhost-user-blk-pci", "u2f-passthru",
                   "virtio-9p-pci", "vhost-user-vsock-pci", "virtio-iommu-pci"},
}
OPTION_CMDS = {"drive_add", "netdev_add", "chardev-add", "chardev-change", "object_add", "device_add"}


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s


def _options(text: str) -> list[tuple[str, str]]:
    """key=value pairs of a QEMU option list (",," is a literal comma)."""
    parts, cur, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    parts.append(cur)
    out = []
    for p in parts:
        k, eq, v = p.partition("=")
        out.append((k.strip().lower(), v if eq else ""))
    return out


def _check_options(cmd: str, args: str) -> str | None:
    if cmd == "drive_add":
        # drive_add [-n] [[<domain>:]<bus>:]<slot> <options>
        toks = args.split(None, 2)
        toks = [t for t in toks if t != "-n"]
        opts = toks[-1] if len(toks) >= 2 else ""
        for k, v in _options(_unquote(opts)):
            if k in ("file", "snapshot", "backing") or (k in PATH_KEYS and (k, v) not in HARMLESS):
                return f"{k}= opens a host path (hot-plug disks with xm block-attach)"
        return None
    if cmd in ("chardev-add", "chardev-change"):
        # chardev-add <backend>,id=...  (chardev-change <id> <backend>,...)
        rest = args.split(None, 1)[1] if cmd == "chardev-change" and len(args.split(None, 1)) > 1 else args
        opts = _options(_unquote(rest))
        kind = opts[0][0] if opts else ""
        if kind in BAD_TYPES[cmd]:
            return f"a {kind} chardev opens a host file or device"
        if kind in ("socket", "unix") and not any(k == "host" for k, _ in opts):
            return "a socket chardev on a host path"
    else:
        opts = _options(_unquote(args))
        kind = ""
        if opts:
            first_k, first_v = opts[0]
            kind = first_v.lower() if first_k in ("type", "driver", "qom-type") else first_k
            for k, v in opts:
                if k in ("type", "driver", "qom-type"):
                    kind = v.lower()
        if kind in BAD_TYPES.get(cmd, ()):
            return f"{kind} opens a host resource"
    for k, v in opts:
        if k in PATH_KEYS and (k, v) not in HARMLESS:
            return f"{k}= names a host path or program"
    return None


def refusal(line: str, host_access: bool = False) -> str | None:
    """Why *line* (one HMP command) is refused, or None to let it through."""
    if host_access:
        return None
    text = line.strip()
    if not text:
        return None
    # HMP ends a command's name at any white space, as here.
    cmd, *rest = re.split(r"\s+", text, maxsplit=1)
    args = rest[0].strip() if rest else ""
    cmd = cmd.lower()
    why: str | None = None
    if cmd in ALWAYS:
        why = ALWAYS[cmd]
    elif cmd in MIGRATE_CMDS:
        toks = args.split()
        while toks and toks[0].startswith("-"):
            toks.pop(0)
        uri = _unquote(" ".join(toks))
        if not MIGRATE_OK.match(uri):
            why = "only tcp:, rdma: and fd: migration URIs are allowed (exec: starts a program, file: " \
                  "and unix: open host paths; use xm save or xm migrate)"
    elif cmd == "change":
        # change vnc ... is harmless; change <drive> <file> opens the file.
        if args.split(None, 1)[:1] != ["vnc"]:
            why = "opens a host file as the medium"
    elif cmd == "nbd_server_start":
        if not re.match(r"^(-[aw]\s+)*[^:/\s]+:\d+\s*$", args + " ") or args.lower().startswith("unix:"):
            why = "only a host:port NBD server is allowed"
    elif cmd in OPTION_CMDS:
        why = _check_options(cmd, args)
    if why is None:
        return None
    return (f"qemu-monitor: '{cmd}' refused: {why}.  Set (qemu-monitor-host-access yes) in "
            "xend-config.sxp to allow commands that reach host files or programs")
