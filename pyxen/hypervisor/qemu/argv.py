"""The QEMU command line for a domain.

Pure function of the domain config and its runtime facts (id, sockets,
accelerator): no processes, no I/O except reading the disk paths it names.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ...config import hvmopts as hvmcfg
from ...config.domain import DomainConfig
from ...config.specs import DiskSpec, PciSpec, vif_model
from . import hvmargv as hvm
from . import optstr

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
    # One (devid, host tap name, MTU) per entry of cfg.vifs, in order: xend
    # has created the taps, QEMU opens them by name.
    nics: list[tuple[int, str, int | None]] = field(default_factory=list)
    # A restore asks for the concrete machine type the guest was saved on
    # ("pc" is an alias that moves with QEMU upgrades).
    machine: str = "pc"
    # "defer": wait for a migration stream (restore) instead of booting;
    # everything else on the command line stays identical to the saved one.
    incoming: str | None = None
    # The control socket of the domain's swtpm (vtpm = [...]), started by xend.
    tpm_sock: Path | None = None
    # Unprivileged QEMU (xend/confine.py): -runas uid:gid, and per disk vdev
    # the (inherited fd, fdset id) xend opened, so QEMU never opens the path.
    runas: str | None = None
    disk_fds: dict[str, tuple[int, int]] = field(default_factory=dict)
    # HVM domains: firmware, display and other decisions xend made at start.
    hvm: "hvm.HvmFacts | None" = None

    @property
    def qmp_sock(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def control_sock(self) -> Path:
        return self.run_dir / "control.sock"

    @property
    def console_sock(self) -> Path:
        return self.run_dir / "console.sock"

    @property
    def qemu_log(self) -> Path:
        return self.console_log.parent.parent / f"qemu-dm-{self.console_log.stem.removeprefix('guest-')}.log"

    @property
    def vnc_sock(self) -> Path:
        return self.run_dir / "vnc.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"


def _chardev_path(p: Path) -> str:
    # QEMU's -chardev key=value syntax needs commas doubled.
    return optstr.value(p)


def max_vcpus(cfg: DomainConfig) -> int:
    return max(cfg.maxvcpus or cfg.vcpus, cfg.vcpus)


def kernel_cmdline(cfg: DomainConfig) -> str:
    args = cfg.kernel_args()
    boot_cpus = f"maxcpus={cfg.vcpus}" if max_vcpus(cfg) > cfg.vcpus else ""
    return " ".join(x for x in ("console=ttyS0", FAST_CMDLINE, boot_cpus, args) if x)


# File-backed disks go straight to QEMU (no loop device).  Chosen by
# measurement (bench/disk.py, bench/README.md "Disk"): the host page cache
# (cache.direct=off) doubles guest reads and costs writes nothing, guest
# flushes still reach the disk; aio=threads equals io_uring within noise
# and works on every host kernel.
FILE_AIO = "threads"
FILE_CACHE_DIRECT = False


def _is_blockdev(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def disk_nodes(d: DiskSpec, fdset: int | None = None) -> list[dict]:
    """The two -blockdev / blockdev-add nodes of a disk: protocol, then format.

    Node names come from the vdev (unique in a domain) so hotplug can name
    them again: f-<vdev> (protocol) and d-<vdev> (format).  With *fdset*,
    QEMU opens the descriptor xend passed in that fdset, not the path.
    """
    proto_name, fmt_name = f"f-{d.vdev}", f"d-{d.vdev}"
    if d.kind == "nbd":
        host, port = d.target.split()
        proto = {"driver": "nbd", "server": {"type": "inet", "host": host, "port": port},
                 "node-name": proto_name, "read-only": d.readonly}
    else:
        # file: naming a block device works as Xen's loop device over it
        # did: it is opened as the device (QEMU's file driver refuses one).
        proto = {"driver": "host_device" if d.kind == "phy" or _is_blockdev(d.target) else "file",
                 "filename": d.target if fdset is None else f"/dev/fdset/{fdset}",
                 "node-name": proto_name, "read-only": d.readonly, "aio": FILE_AIO,
                 "cache": {"direct": FILE_CACHE_DIRECT}}
        if d.mode == "w!":
            # The user overrode the sharing guard; QEMU's own image lock
            # would refuse the second writer, so it is lifted for this disk.
            proto["locking"] = "off"
    fmt = {"driver": d.fmt, "file": proto_name, "node-name": fmt_name, "read-only": d.readonly}
    return [proto, fmt]


def disk_device_props(d: DiskSpec) -> dict:
    """The guest-side device: virtio-blk whose serial is the Xen vdev name."""
    return {"driver": "virtio-blk-pci", "drive": f"d-{d.vdev}", "serial": d.vdev, "id": f"vbd-{d.vdev}"}


def disk_device(d: DiskSpec) -> str:
    return optstr.kv(disk_device_props(d), "driver")


def netdev_props(devid: int, tap: str) -> dict:
    """The -netdev / netdev_add properties of vif *devid* on host tap *tap*."""
    return {"type": "tap", "id": f"vif{devid}", "ifname": tap, "script": "no", "downscript": "no"}


def nic_props(devid: int, spec: dict, hvm: bool = False, mtu: int | None = None,
              bootindex: int | None = None) -> dict:
    """The -device / device_add properties of vif *devid*'s NIC (its MAC is already set)."""
    # No option ROM unless an HVM guest boots from the network (boot='n'):
    # the ROM costs start-up time and memory.
    props = {"driver": vif_model(spec, hvm), "netdev": f"vif{devid}", "mac": spec["mac"],
             "id": f"nic{devid}"}
    if bootindex is None:
        props["romfile"] = ""
    else:
        props["bootindex"] = bootindex
    if mtu and mtu < 1500 and props["driver"] == "virtio-net-pci":
        # A smaller host side (a vnet's VXLAN) is told to a virtio guest,
        # which then uses that MTU instead of losing its large frames.
        props["host_mtu"] = mtu
    return props


def pci_device_id(p: PciSpec) -> str:
    """QEMU's id for a passed-through device (ids may not contain ':')."""
    return "pt-" + p.bdf.replace(":", "-")


def pci_device_props(p: PciSpec) -> dict:
    """The -device / device_add properties giving the guest host device *p* through VFIO."""
    props = {"driver": "vfio-pci", "host": p.bdf, "id": pci_device_id(p)}
    if p.vslot is not None:
        props["addr"] = hex(p.vslot)
    return props


def tpm_args(sock: Path) -> list[str]:
    """A TPM 2.0 (CRB interface) backed by the swtpm listening on *sock*."""
    return ["-chardev", f"socket,id=chrtpm,path={_chardev_path(sock)}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", "tpm-crb,tpmdev=tpm0"]


def _kv(props: dict, first: str) -> str:
    return optstr.kv(props, first)


def build(cfg: DomainConfig, rt: Runtime) -> list[str]:
    is_hvm = cfg.builder == "hvm"
    facts = rt.hvm or hvm.HvmFacts()
    a = [rt.qemu,
         "-name", f"{optstr.value(cfg.name)},debug-threads=on",
         # seccomp: no obsolete syscalls and no resource control from inside
         # QEMU.  (elevateprivileges=deny also forbids the setsid() of
         # -daemonize, and spawn=deny its fork, so those two stay allowed.)
         "-sandbox", "on,obsolete=deny,resourcecontrol=deny",
         "-uuid", cfg.uuid,
         "-machine", rt.machine + (hvm.machine_suffix(cfg) if is_hvm else ""),
         "-nodefaults", "-no-user-config", "-display", "sdl" if is_hvm and facts.sdl else "none",
         # Boot with the ceiling (maxmem); xend balloons down to 'memory'.
         "-m", f"{max(cfg.memory, cfg.maxmem or 0)}M"]
    flags = hvm.cpu_flags(cfg, rt.accel) if is_hvm else []
    if rt.accel == "kvm":
        a += ["-accel", "kvm", "-cpu", ",".join(["host"] + flags)]
    else:
        # A 64 MiB translation cache instead of the 1 GiB default per guest.
        a += ["-accel", "tcg,tb-size=64"]
        if flags:
            a += ["-cpu", ",".join(["qemu64"] + flags)]
    # Every vCPU up to maxvcpus exists from the start; the guest kernel brings
    # up only 'vcpus' of them (maxcpus=) and xm vcpu-set onlines/offlines the
    # rest through the control channel, as Xen's cpu/N/availability did.
    # (QEMU 7.2 crashes when a hot-unplugged vCPU slot is plugged again.)
    a += ["-smp", str(max_vcpus(cfg))]
    a += ["-chardev", f"socket,id=qmp,path={_chardev_path(rt.qmp_sock)},server=on,wait=off",
          "-mon", "chardev=qmp,mode=control",
          "-chardev", (f"socket,id=con0,path={_chardev_path(rt.console_sock)},server=on,wait=off,"
                       f"logfile={_chardev_path(rt.console_log)},logappend=on"),
          "-serial", "chardev:con0",
          "-device", "virtio-serial-pci,id=vser0",
          "-chardev", f"socket,id=ctl,path={_chardev_path(rt.control_sock)},server=on,wait=off",
          "-device", "virtserialport,bus=vser0.0,chardev=ctl,name=org.pyxen.control"]
    # The toolstack, not QEMU, decides what a guest poweroff or panic means:
    # QEMU stops and reports, xend applies on_poweroff/on_crash.  A guest
    # reboot resets in place (the common on_reboot=restart costs nothing);
    # xend sees the RESET event and applies any other on_reboot action.
    a += ["-action", "shutdown=pause", "-action", "panic=pause",
          "-device", "pvpanic-pci",
          "-device", "virtio-balloon-pci,id=balloon0"]
    if cfg.builder == "linux":
        if rt.tpm_sock is not None:
            # SeaBIOS puts the ACPI tables and the 64 KiB TPM event log at the
            # top of RAM, past the space QEMU 7.2 keeps free above the initrd:
            # the initrd lands on the tables and the guest boots without ACPI.
            # qboot keeps its tables in low memory.
            a += ["-bios", "qboot.rom"]
        a += ["-kernel", rt.kernel or cfg.kernel]
        if cfg.ramdisk:
            a += ["-initrd", cfg.ramdisk]
        a += ["-append", kernel_cmdline(cfg)]
    if rt.runas:
        # QEMU opens its command line as root, then drops to this user.
        a += ["-runas", rt.runas]
    disks = hvmcfg.all_disks(cfg.disks, cfg.hvm) if is_hvm else cfg.disks
    boot = hvm.boot_indexes(cfg, disks) if is_hvm else {}
    if is_hvm:
        a += hvm.firmware_args(cfg, facts)
    for d in disks:
        if d.target:
            fdset = None
            if d.vdev in rt.disk_fds:
                fd, fdset = rt.disk_fds[d.vdev]
                a += ["-add-fd", optstr.props({"fd": fd, "set": fdset, "opaque": f"pyxen-disk:{d.vdev}"})]
            for node in disk_nodes(d, fdset):
                a += ["-blockdev", json.dumps(node)]
        elif not is_hvm:
            continue
        if is_hvm:
            a += ["-device", _kv(hvm.disk_device_props(d, boot.get(f"vbd-{d.vdev}")), "driver")]
        else:
            a += ["-device", disk_device(d)]
    # NICs after the disks, in vif order, so the guest names them eth0, eth1, ...
    for i, (spec, (devid, tap, mtu)) in enumerate(zip(cfg.vifs, rt.nics)):
        a += ["-netdev", _kv(netdev_props(devid, tap), "type"),
              "-device", _kv(nic_props(devid, spec, is_hvm, mtu, boot.get(f"nic{i}")), "driver")]
    # Host PCI devices (pci = [...]) through VFIO, for PV and HVM guests alike.
    for p in cfg.pci:
        a += ["-device", _kv(pci_device_props(p), "driver")]
    if rt.tpm_sock is not None:
        a += tpm_args(rt.tpm_sock)
    if is_hvm:
        a += hvm.device_args(cfg, facts, rt.run_dir, boot)
    if rt.incoming:
        a += ["-incoming", rt.incoming]
    # -D keeps a daemonized QEMU's stderr open (it would go to /dev/null):
    # errors and guest faults land in the domain's qemu-dm log.
    a += ["-S", "-daemonize", "-pidfile", str(rt.pidfile), "-d", "guest_errors", "-D", str(rt.qemu_log)]
    return a
