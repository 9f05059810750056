"""The QEMU command line for a domain.

Pure function of the domain config and its runtime facts (id, sockets,
accelerator): no processes, no I/O except reading the disk paths it names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...config.domain import DomainConfig

try:
    from .kernel import FAST_CMDLINE
except ImportError:  # pragma: no cover - kernel helpers are optional at import
    FAST_CMDLINE = "tsc=reliable no_timer_check cryptomgr.notests 8250.nr_uarts=1"


@dataclass
class Runtime:
    domid: int
    run_dir: Path
    console_log: Path
    accel: str                 # kvm | tcg
    qemu: str = "qemu-system-x86_64"
    kernel: str | None = None  # the file to boot (may be a cached vmlinux)
    # A restore asks for the concrete machine type the guest was saved on
    # ("pc" is an alias that moves with QEMU upgrades).
    machine: str = "pc"
    # "defer": wait for a migration stream (restore) instead of booting;
    # everything else on the command line stays identical to the saved one.
    incoming: str | None = None

    @property
    def qmp_sock(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def console_sock(self) -> Path:
        return self.run_dir / "console.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"


def _chardev_path(p: Path) -> str:
    # QEMU's -chardev key=value syntax needs commas doubled.
    return str(p).replace(",", ",,")


def kernel_cmdline(cfg: DomainConfig) -> str:
    args = cfg.kernel_args()
    return " ".join(x for x in ("console=ttyS0", FAST_CMDLINE, args) if x)


def build(cfg: DomainConfig, rt: Runtime) -> list[str]:
    a = [rt.qemu,
         "-name", f"{cfg.name},debug-threads=on",
         "-uuid", cfg.uuid,
         "-machine", rt.machine,
         "-nodefaults", "-no-user-config", "-display", "none",
         "-m", f"{cfg.memory}M"]
    if rt.accel == "kvm":
        a += ["-accel", "kvm", "-cpu", "host"]
    else:
        # A 64 MiB translation cache instead of the 1 GiB default per guest.
        a += ["-accel", "tcg,tb-size=64"]
    maxv = cfg.maxvcpus or cfg.vcpus
    a += ["-smp", f"{cfg.vcpus},maxcpus={maxv}" if maxv > cfg.vcpus else str(cfg.vcpus)]
    a += ["-chardev", f"socket,id=qmp,path={_chardev_path(rt.qmp_sock)},server=on,wait=off",
          "-mon", "chardev=qmp,mode=control",
          "-chardev", (f"socket,id=con0,path={_chardev_path(rt.console_sock)},server=on,wait=off,"
                       f"logfile={_chardev_path(rt.console_log)},logappend=on"),
          "-serial", "chardev:con0"]
    # The toolstack, not QEMU, decides what a guest poweroff or panic means:
    # QEMU stops and reports, xend applies on_poweroff/on_crash.  A guest
    # reboot resets in place (the common on_reboot=restart costs nothing);
    # xend sees the RESET event and applies any other on_reboot action.
    a += ["-action", "shutdown=pause", "-action", "panic=pause",
          "-device", "pvpanic"]
    if cfg.builder == "linux":
        a += ["-kernel", rt.kernel or cfg.kernel]
        if cfg.ramdisk:
            a += ["-initrd", cfg.ramdisk]
        a += ["-append", kernel_cmdline(cfg)]
    for i, d in enumerate(cfg.disks):
        if not d.target:
            continue
        if d.kind == "nbd":
            host, port = d.target.split()
            proto = {"driver": "nbd", "server": {"type": "inet", "host": host, "port": port},
                     "node-name": f"f{i}", "read-only": d.readonly}
        else:
            proto = {"driver": "host_device" if d.kind == "phy" else "file", "filename": d.target,
                     "node-name": f"f{i}", "read-only": d.readonly, "aio": "threads",
                     "cache": {"direct": False}}
        a += ["-blockdev", json.dumps(proto)]
        a += ["-blockdev", json.dumps({"driver": d.fmt, "file": f"f{i}", "node-name": f"d{i}",
                                       "read-only": d.readonly})]
        a += ["-device", f"virtio-blk-pci,drive=d{i},serial={d.vdev},id=vbd-{d.vdev}"]
    if rt.incoming:
        a += ["-incoming", rt.incoming]
    a += ["-S", "-daemonize", "-pidfile", str(rt.pidfile)]
    return a
