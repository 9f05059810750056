"""The typed domain configuration, and its SXP form.

``DomainConfig`` is what the rest of pyxen works with.  It is built from the
values of an xm config file (``from_values``), serialised as Xen's
``(vm ...)`` SXP (``to_sxp``) — the form ``xm create -n`` prints, xm sends to
xend and xend persists — and read back from it (``from_sxp``).
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field

from . import hvmopts as hvmcfg
from . import names, sxp
from .errors import ConfigError
from .options import ACTIONS, CRASH_ACTIONS, HOST_FAILURE_ACTIONS, default
from .specs import (DiskSpec, PciSpec, VtpmSpec, disk_from_parts, parse_cpuset, parse_disk, parse_pci,
                    parse_vif, parse_vtpm, pci_from_sxp)

# The HVM variables xm copies into (image (hvm ...)), in Xen's order.
HVM_KEYS = ("device_model", "pae", "boot", "cdrom", "fda", "fdb", "localtime", "rtc_timeoffset",
            "serial", "monitor", "stdvga", "isa", "nographic", "soundhw", "vnc", "vncdisplay",
            "vncunused", "vncconsole", "vnclisten", "vncpasswd", "vncviewer", "sdl", "opengl",
            "display", "xauthority", "acpi", "apic", "hpet", "usb", "usbdevice", "keymap",
            "videoram", "viridian", "ne2000", "timer_mode", "guest_os_type", "firmware")

_RESTART_MAP = {
    "onreboot": ("destroy", "restart", "destroy"),
    "always": ("restart", "restart", "restart"),
    "never": ("destroy", "destroy", "destroy"),
}


# "the options table's default" (pyxen/config/options.py): defaults are
# written once, there.
_TABLE = object()


def _int(values: dict, key: str, dflt=_TABLE, minimum=None):
    v = values.get(key, default(key) if dflt is _TABLE else dflt)
    if v is None:
        return None
    if isinstance(v, bool):
        v = int(v)
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected an integer, got {v!r}") from None
    if minimum is not None and n < minimum:
        raise ConfigError(f"{key}: must be at least {minimum}, got {n}")
    return n


def _str(values: dict, key: str, dflt=_TABLE):
    if dflt is _TABLE:      # (an unset string variable reads as "")
        dflt = default(key) or ""
    v = values.get(key, dflt)
    if v is None:
        return dflt
    if not isinstance(v, (str, int, float)):
        raise ConfigError(f"{key}: expected a string, got {v!r}")
    return str(v)


def _list(values: dict, key: str) -> list:
    v = values.get(key) or []
    if isinstance(v, (str, int)):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {v!r}")
    return list(v)


@dataclass
class DomainConfig:
    name: str
    uuid: str = ""
    # Defaults from the options table (an unset string reads as "").
    builder: str = default("builder")
    memory: int = default("memory")
    maxmem: int | None = default("maxmem")
    vcpus: int = default("vcpus")
    maxvcpus: int | None = default("maxvcpus")
    cpus: object = default("cpus")
    cpu_weight: int = default("cpu_weight")
    cpu_cap: int = default("cpu_cap")
    on_poweroff: str = default("on_poweroff")
    on_reboot: str = default("on_reboot")
    on_crash: str = default("on_crash")
    on_watchdog: str = default("on_watchdog")
    on_host_failure: str = default("on_host_failure")
    kernel: str = default("kernel") or ""
    ramdisk: str = default("ramdisk")
    root: str = default("root")
    extra: str = default("extra")
    cmdline: str | None = default("cmdline")
    ip: str = default("ip")
    console_port: int | None = default("console")
    description: str = default("description")
    disks: list[DiskSpec] = field(default_factory=list)
    vifs: list[dict] = field(default_factory=list)
    pci: list[PciSpec] = field(default_factory=list)
    vtpm: list[VtpmSpec] = field(default_factory=list)
    # What xm noticed while evaluating the file (variables with no effect on
    # QEMU, unknown names); xend writes them to its log.  Not part of the SXP.
    notes: list[str] = field(default_factory=list, compare=False, repr=False)
    # HVM device-model settings (Appendix A keys), as given; in (image (hvm ...)).
    hvm: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- build
    @classmethod
    def from_values(cls, values: dict) -> "DomainConfig":
        name = _str(values, "name")
        if not name:
            raise ConfigError("name: the domain needs a name")
        names.check(name)
        builder = _str(values, "builder")
        t = values.get("type")
        if t:
            builder = {"pv": "linux", "pvh": "linux", "hvm": "hvm"}.get(str(t))
            if builder is None:
                raise ConfigError(f"type: expected pv, pvh or hvm, got {t!r}")
        if builder == "vmx":
            builder = "hvm"
        if builder not in ("linux", "hvm"):
            raise ConfigError(f"builder: expected 'linux' or 'hvm', got {builder!r}")
        acts = {k: _str(values, k) for k in ("on_poweroff", "on_reboot", "on_crash")}
        restart = _str(values, "restart")
        if restart:
            if restart not in _RESTART_MAP:
                raise ConfigError(f"restart: expected onreboot, always or never, got {restart!r}")
            acts = dict(zip(("on_poweroff", "on_reboot", "on_crash"), _RESTART_MAP[restart]))
        for k, v in acts.items():
            allowed = CRASH_ACTIONS if k == "on_crash" else ACTIONS
            if v not in allowed:
                raise ConfigError(f"{k}: expected one of {', '.join(allowed)}, got {v!r}")
        memory = _int(values, "memory", minimum=1)
        maxmem = _int(values, "maxmem", minimum=1)
        if maxmem is not None and maxmem < memory:
            raise ConfigError(f"maxmem ({maxmem}) is less than memory ({memory})")
        vcpus = _int(values, "vcpus", minimum=1)
        maxvcpus = _int(values, "maxvcpus", minimum=1)
        if maxvcpus is not None and maxvcpus < vcpus:
            raise ConfigError(f"maxvcpus ({maxvcpus}) is less than vcpus ({vcpus})")
        cpus = values.get("cpus")
        if cpus is not None and cpus != "":
            if isinstance(cpus, (list, tuple)):
                cpus = [str(c) for c in cpus]
                for i, c in enumerate(cpus):
                    parse_cpuset(c, f"cpus[{i}]")
            elif isinstance(cpus, int):
                cpus = str(cpus)
            else:
                parse_cpuset(str(cpus))
                cpus = str(cpus)
        else:
            cpus = None
        wd = _str(values, "on_watchdog")
        if wd not in CRASH_ACTIONS:
            raise ConfigError(f"on_watchdog: expected one of {', '.join(CRASH_ACTIONS)}, got {wd!r}")
        hf = _str(values, "on_host_failure")
        if hf not in HOST_FAILURE_ACTIONS:
            raise ConfigError(f"on_host_failure: expected one of {', '.join(HOST_FAILURE_ACTIONS)}, got {hf!r}")
        cap = values.get("cap")
        cpu_cap = _int(values, "cap" if cap is not None else "cpu_cap", default("cpu_cap"), minimum=0)
        disks = [d if isinstance(d, DiskSpec) else parse_disk(d) for d in _list(values, "disk")]
        vifs = [parse_vif(v) for v in _list(values, "vif")]
        nics = _int(values, "nics")
        if nics is not None and nics > len(vifs):
            vifs += [{} for _ in range(nics - len(vifs))]
        u = _str(values, "uuid") or str(uuidlib.uuid4())
        try:
            u = str(uuidlib.UUID(u))
        except ValueError:
            raise ConfigError(f"uuid: not a UUID: {u!r}") from None
        cmdline = values.get("cmdline")
        kernel = _str(values, "kernel")
        if builder == "linux" and not kernel:
            raise ConfigError("kernel: a kernel is required for the linux builder")
        hvm = {}
        audio = _int(values, "audio", 0)
        if audio and builder != "hvm":
            raise ConfigError("audio: sound cards need an HVM domain (builder = 'hvm')")
        if builder == "hvm":
            hvm = _hvm_values(values)
            if audio and not hvm.get("soundhw"):
                hvm["soundhw"] = "sb16"     # what Xen 3.0's qemu-dm -enable-audio gave
            for k, v in hvmcfg.from_vfb(_list(values, "vfb")).items():
                hvm.setdefault(k, v)
            hvm["firmware"] = hvmcfg.firmware_of(values, kernel)
            hvmcfg.check(hvm, disks)
            if hvm.get("ne2000"):
                # Xen 3.0's ne2000=1: the emulated NICs are NE2000s.
                vifs = [dict(v, model="ne2k_pci") if "model" not in v else v for v in vifs]
        return cls(
            name=name, uuid=u, builder=builder, memory=memory, maxmem=maxmem,
            vcpus=vcpus, maxvcpus=maxvcpus, cpus=cpus, on_watchdog=wd, on_host_failure=hf,
            cpu_weight=_int(values, "cpu_weight", minimum=1), cpu_cap=cpu_cap,
            kernel=kernel, ramdisk=_str(values, "ramdisk"),
            root=_str(values, "root"), extra=_nfs_extra(values),
            cmdline=None if cmdline is None else str(cmdline),
            ip=str(values["_ip_param"]) if "_ip_param" in values else _ip_param(values),
            console_port=_int(values, "console", minimum=1),
            description=_str(values, "description"),
            disks=disks, vifs=vifs,
            pci=[p if isinstance(p, PciSpec) else parse_pci(p) for p in _list(values, "pci")],
            vtpm=_vtpms(values),
            hvm=hvm,
            **acts)

    # ------------------------------------------------------------ kernel args
    def kernel_args(self) -> str:
        """The guest kernel command line the config asks for (Xen's rules)."""
        if self.cmdline is not None:
            return self.cmdline
        parts = []
        if self.ip:
            parts.append(f"ip={self.ip}")
        if self.root:
            parts.append(f"root={self.root}")
        if self.extra:
            parts.append(self.extra)
        return " ".join(parts)

    # ------------------------------------------------------------------ SXP
    def to_sxp(self) -> list:
        """Xen's ``(vm ...)``, fields in the order xm's make_config writes them."""
        s: list = ["vm", ["name", self.name], ["memory", self.memory]]
        if self.maxmem is not None:
            s.append(["maxmem", self.maxmem])
        s += [["on_poweroff", self.on_poweroff], ["on_reboot", self.on_reboot],
              ["on_crash", self.on_crash], ["vcpus", self.vcpus]]
        s.append(["uuid", self.uuid])
        if self.cpus is not None:
            s.append(["cpus", self.cpus if isinstance(self.cpus, str) else list(self.cpus)])
        s += [["cpu_cap", self.cpu_cap], ["cpu_weight", self.cpu_weight]]
        # pyxen / xl additions, after Xen's own fields.
        if self.maxvcpus is not None:
            s.append(["maxvcpus", self.maxvcpus])
        if self.on_watchdog != default("on_watchdog"):
            s.append(["on_watchdog", self.on_watchdog])
        if self.on_host_failure != default("on_host_failure"):
            s.append(["on_host_failure", self.on_host_failure])
        if self.console_port is not None:
            s.append(["console", self.console_port])
        if self.description:
            s.append(["description", self.description])
        img: list = [self.builder, ["kernel", self.kernel]]
        if self.ramdisk:
            img.append(["ramdisk", self.ramdisk])
        if self.ip:
            img.append(["ip", self.ip])
        if self.root:
            img.append(["root", self.root])
        if self.extra:
            img.append(["args", self.extra])
        if self.cmdline is not None:
            img.append(["cmdline", self.cmdline])
        for k in HVM_KEYS:
            if k in self.hvm:
                img.append([k, self.hvm[k]])
        s.append(["image", img])
        for d in self.disks:
            s.append(d.to_sxp())
        for v in self.vifs:
            s.append(["device", ["vif"] + [[k, val] for k, val in v.items()]])
        for p in self.pci:
            s.append(p.to_sxp())
        for t in self.vtpm:
            s.append(t.to_sxp())
        return s

    @classmethod
    def from_sxp(cls, cfg) -> "DomainConfig":
        if isinstance(cfg, str):
            cfg = sxp.from_string(cfg)
        if not isinstance(cfg, list) or not cfg or cfg[0] not in ("vm", "domain"):
            raise ConfigError("config: expected a (vm ...) SXP expression")
        values: dict = {}
        for item in cfg[1:]:
            if not isinstance(item, list) or not item:
                continue
            key = item[0]
            if key == "image":
                img = item[1] if len(item) > 1 and isinstance(item[1], list) else []
                if img:
                    values["builder"] = img[0]
                    for sub in img[1:]:
                        if isinstance(sub, list) and sub:
                            # (ip ...) in SXP is the composed ip= parameter.
                            k = {"args": "extra", "ip": "_ip_param"}.get(sub[0], sub[0])
                            values[k] = sub[1] if len(sub) > 1 else ""
            elif key in ("device", "dev"):
                # (dev (vif ...)) is the manual's own spelling (Appendix B.1).
                dev = item[1] if len(item) > 1 and isinstance(item[1], list) else []
                if not dev:
                    continue
                fields = {f[0]: (f[1] if len(f) > 1 else "") for f in dev[1:] if isinstance(f, list) and f}
                if dev[0] in ("vbd", "tap"):
                    values.setdefault("disk", []).append(disk_from_parts(
                        fields.get("uname", ""), fields.get("dev", ""), fields.get("mode", "r"),
                        fields.get("backend", "0")))
                elif dev[0] == "pci":
                    for d in dev[1:]:
                        if isinstance(d, list) and d and d[0] == "dev":
                            values.setdefault("pci", []).append(pci_from_sxp(d))
                elif dev[0] == "vtpm":
                    values.setdefault("vtpm", []).append(",".join(f"{k}={v}" for k, v in fields.items()))
                elif dev[0] == "vif":
                    values.setdefault("vif", []).append(",".join(f"{k}={v}" for k, v in fields.items()))
                else:
                    raise ConfigError(f"({key} ({dev[0]} ...)): unknown device type "
                                      "(expected vbd, tap, vif, pci or vtpm)")
            elif key == "cpus":
                values["cpus"] = item[1] if len(item) > 1 else None
            elif key == "console":
                values["console"] = item[1] if len(item) > 1 else None
            elif len(item) > 1 and not isinstance(item[1], list):
                values[key] = item[1]
            elif len(item) > 1:
                # Never dropped without a word: Xen's (vm ...) has no other list field.
                raise ConfigError(f"({key} ({item[1][0] if item[1] else ''} ...)): not a field of a "
                                  "(vm ...) config")
        return cls.from_values(values)


def _vtpms(values: dict) -> list:
    out = [t if isinstance(t, VtpmSpec) else parse_vtpm(t) for t in _list(values, "vtpm")]
    if len(out) > 1:
        raise ConfigError(f"vtpm: a domain has at most one vTPM, got {len(out)}")
    return out


def _hvm_values(values: dict) -> dict:
    """The HVM keys that are set, typed by the option table (SXP gives strings)."""
    from .options import BY_NAME
    out = {}
    for k in HVM_KEYS:
        if values.get(k) in (None, ""):
            continue
        out[k] = _int(values, k) if BY_NAME[k].kind == "int" else _str(values, k)
    return out


def _nfs_extra(values: dict) -> str:
    """'extra', with Xen's nfsroot=<nfs_server>:<nfs_root> in front when nfs_root is set."""
    extra = _str(values, "extra")
    nfs_root = _str(values, "nfs_root")
    if not nfs_root:
        return extra
    server = _str(values, "nfs_server")
    if not server:
        raise ConfigError("nfs_root: an NFS root needs nfs_server too")
    if not nfs_root.startswith("/"):
        raise ConfigError(f"nfs_root: expected an absolute path on the server, got {nfs_root!r}")
    return " ".join(x for x in (f"nfsroot={server}:{nfs_root}", extra) if x)


def _ip_param(values: dict) -> str:
    """Xen's ip= kernel parameter from ip/gateway/netmask/hostname/interface/dhcp."""
    ip = _str(values, "ip")
    dhcp = _str(values, "dhcp")
    if not ip and dhcp in ("", "off"):
        return ""
    server = _str(values, "nfs_server")
    return ":".join([ip, server, _str(values, "gateway"), _str(values, "netmask"),
                     _str(values, "hostname"), _str(values, "interface"),
                     "dhcp" if dhcp == "dhcp" else "off"])
