"""The QEMU command line for a domain.

Pure function of the domain config and its runtime facts (id, sockets,
accelerator): no processes, no I/O except reading the disk paths it names.
"""

from __future__ import annotations

import dataclasses
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
    # Started by xend (process.start: confined, in run_dir as its cwd, no
    # -daemonize) or, for the benchmarks, daemonizing by itself.
    daemonize: bool = True
    # Descriptors xend opened (xend/confine.py), so QEMU opens no host path:
    # the -add-fd list (fd, fdset id, opaque); per disk vdev the fdset of
    # the image and the (fdset, format) of each backing layer; the kernel,
    # initrd and console log arguments that replace their paths.
    add_fds: list[tuple[int, int, str]] = field(default_factory=list)
    disk_fds: dict[str, tuple[int, list[tuple[int, str]]]] = field(default_factory=dict)
    initrd: str | None = None
    console_log_arg: str | None = None
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

    def arg_path(self, p: Path) -> Path:
        """*p* as QEMU's command line names it: a file of the run dir by its
        bare name when QEMU runs there (no ancestor directory needs to be
        reachable by QEMU's uid, and socket paths stay short)."""
        if not self.daemonize and p.parent == self.run_dir:
            return Path(p.name)
        return p


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


def disk_node_names(vdev: str, layers: int) -> list[str]:
    """Node names of a disk with *layers* backing layers, in the order
    blockdev-del takes them (users first)."""
    out = [f"d-{vdev}", f"f-{vdev}"]
    for i in range(1, layers + 1):
        out += [f"b{i}-{vdev}", f"f{i}-{vdev}"]
    return out


def disk_nodes(d: DiskSpec, fdset: int | None = None,
               backing: list[tuple[int, str]] | None = None) -> list[dict]:
    """The -blockdev / blockdev-add nodes of a disk, in creation order:
    each backing layer (deepest first), then the image's protocol and
    format nodes.

    Node names come from the vdev (unique in a domain) so hotplug can name
    them again: f-<vdev> (protocol) and d-<vdev> (format), f<i>-/b<i>- for
    backing layer i.  With *fdset*, QEMU opens the descriptor xend passed
    in that fdset, not the path; *backing* (fdset, format) per layer, top
    first, names every layer the same way, so QEMU opens no backing file by
    name either (given as [] for an image xend found has none).
    """
    layers: list[dict] = []
    if fdset is not None and backing is not None:
        below = None
        for i in range(len(backing), 0, -1):
            s, fmt = backing[i - 1]
            node = {"driver": fmt, "file": f"f{i}-{d.vdev}", "node-name": f"b{i}-{d.vdev}", "read-only": True}
            if fmt != "raw":
                node["backing"] = below
            layers = layers + [{"driver": "file", "filename": f"/dev/fdset/{s}", "node-name": f"f{i}-{d.vdev}",
                                "read-only": True, "aio": FILE_AIO, "cache": {"direct": FILE_CACHE_DIRECT}},
                               node]
            below = f"b{i}-{d.vdev}"
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
    # Only the formats that can have a backing file take the option (QEMU's
    # generic-COW ones); vpc (vhd) refuses "backing": null outright.
    if fdset is not None and backing is not None and d.fmt in ("qcow2", "qcow", "qed", "vmdk"):
        fmt["backing"] = f"b1-{d.vdev}" if backing else None
    return layers + [proto, fmt]


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
    if facts.nvram is not None:
        facts = dataclasses.replace(facts, nvram=rt.arg_path(facts.nvram))
    if facts.vnc_tls_dir is not None:
        # The x509 copy lives in the run dir too: a confined QEMU reaches it
        # by its bare name (its ancestors are not its uid's to traverse).
        facts = dataclasses.replace(facts, vnc_tls_dir=rt.arg_path(facts.vnc_tls_dir))
    # seccomp: no obsolete syscalls, no resource control from inside QEMU,
    # and (started by xend, which does the fork and setsid -daemonize would
    # need) no privilege changes and no spawning: a QEMU told to run a
    # program (migrate "exec:...") is killed instead.
    sandbox = ("on,obsolete=deny,resourcecontrol=deny" if rt.daemonize else
               "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")
    a = [rt.qemu,
         "-name", f"{optstr.value(cfg.name)},debug-threads=on",
         "-sandbox", sandbox,
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
    # Descriptors first: later options name their fdsets.
    for fd, fdset, opaque in rt.add_fds:
        a += ["-add-fd", optstr.props({"fd": fd, "set": fdset, "opaque": opaque})]
    conlog = rt.console_log_arg or str(rt.console_log)
    a += ["-chardev", f"socket,id=qmp,path={_chardev_path(rt.arg_path(rt.qmp_sock))},server=on,wait=off",
          "-mon", "chardev=qmp,mode=control",
          "-chardev", (f"socket,id=con0,path={_chardev_path(rt.arg_path(rt.console_sock))},server=on,wait=off,"
                       f"logfile={optstr.value(conlog)},logappend=on"),
          "-serial", "chardev:con0",
          "-device", "virtio-serial-pci,id=vser0",
          "-chardev", f"socket,id=ctl,path={_chardev_path(rt.arg_path(rt.control_sock))},server=on,wait=off",
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
            a += ["-initrd", rt.initrd or cfg.ramdisk]
        a += ["-append", kernel_cmdline(cfg)]
    disks = hvmcfg.all_disks(cfg.disks, cfg.hvm) if is_hvm else cfg.disks
    boot = hvm.boot_indexes(cfg, disks) if is_hvm else {}
    if is_hvm:
        a += hvm.firmware_args(cfg, facts)
    for d in disks:
        if d.target:
            fdset, backing = rt.disk_fds.get(d.vdev, (None, None))
            for node in disk_nodes(d, fdset, backing):
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
        a += tpm_args(rt.arg_path(rt.tpm_sock))
    if is_hvm:
        a += hvm.device_args(cfg, facts, rt.arg_path(rt.vnc_sock).parent, boot,
                             {k: v[0] for k, v in rt.disk_fds.items()})
    if rt.incoming:
        a += ["-incoming", rt.incoming]
    if rt.daemonize:
        # -D keeps a daemonized QEMU's stderr open (it would go to /dev/null):
        # errors and guest faults land in the domain's qemu-dm log.
        a += ["-S", "-daemonize", "-pidfile", str(rt.pidfile), "-d", "guest_errors", "-D", str(rt.qemu_log)]
    else:
        # xend made stderr the qemu-dm log and writes the pidfile (QEMU's own
        # -pidfile resolves its full path, which its uid may not traverse).
        a += ["-S", "-d", "guest_errors"]
    return a
