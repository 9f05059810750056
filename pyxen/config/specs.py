"""Device spec grammars from xm config files: disk and vif entries.

Each parser takes the string a user wrote and returns a typed spec, or
raises ConfigError naming the entry and what is wrong with it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .errors import ConfigError

# Backend types a disk uname may name.  tap:<driver> and the bare format
# prefixes map onto a QEMU image format.
_TAP_FORMATS = {"aio": "raw", "sync": "raw", "ioemu": "raw", "tapdisk": "raw", "ram": "raw",
                "qcow": "qcow", "qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vpc"}
_FORMAT_PREFIXES = {"qcow2": "qcow2", "qcow": "qcow", "raw": "raw", "vhd": "vpc", "vmdk": "vmdk"}
_VDEV_RE = re.compile(r"^(?:(hd[a-t])|(sd[a-z]{1,2})|(xvd[a-z]{1,2})|(vd[a-z]{1,2}))([0-9]{0,2})$")


@dataclass
class DiskSpec:
    uname: str          # as written: file:/img, phy:hda1, tap:qcow2:/x, '' (empty cdrom)
    kind: str           # phy | file | tap | nbd | '' (empty)
    target: str         # path (phy: names resolved under /dev)
    fmt: str            # raw | qcow2 | qcow | vpc | vmdk
    vdev: str           # guest device name, e.g. sda1, hda, xvda
    mode: str           # r | w | w!
    devtype: str = "disk"   # disk | cdrom
    ioemu: bool = False     # 3.0 HVM 'ioemu:' prefix
    backend: str = "0"

    @property
    def readonly(self) -> bool:
        return "w" not in self.mode

    def to_sxp(self) -> list:
        dev = self.vdev + (":cdrom" if self.devtype == "cdrom" else "")
        if self.ioemu:
            dev = "ioemu:" + dev
        cls = "tap" if self.kind == "tap" else "vbd"
        return ["device", [cls, ["uname", self.uname], ["dev", dev], ["mode", self.mode]]]


def _resolve_phy(target: str) -> str:
    if target.startswith("/"):
        return target
    # Xen: a bare name means /dev/<name>; 'vg/lv' therefore becomes /dev/vg/lv.
    return "/dev/" + target


def parse_uname(uname: str, entry: str) -> tuple[str, str, str]:
    """Return (kind, target, format) for a disk uname."""
    if uname == "":
        return "", "", "raw"
    if ":" not in uname:
        raise ConfigError(f"Invalid disk specifier {entry!r}: {uname!r} needs a type prefix such as file: or phy:")
    kind, rest = uname.split(":", 1)
    if kind == "phy":
        if not rest:
            raise ConfigError(f"Invalid disk specifier {entry!r}: phy: needs a device")
        return "phy", _resolve_phy(rest), "raw"
    if kind == "file":
        if not rest:
            raise ConfigError(f"Invalid disk specifier {entry!r}: file: needs a path")
        return "file", rest, "raw"
    if kind == "tap":
        if ":" not in rest:
            raise ConfigError(f"Invalid disk specifier {entry!r}: tap: needs a driver, e.g. tap:aio:/path")
        drv, path = rest.split(":", 1)
        if drv not in _TAP_FORMATS:
            raise ConfigError(f"Invalid disk specifier {entry!r}: unknown tap driver {drv!r}")
        if not path:
            raise ConfigError(f"Invalid disk specifier {entry!r}: tap:{drv}: needs a path")
        return "tap", path, _TAP_FORMATS[drv]
    if kind == "nbd":
        # Xen's block-nbd: 'nbd:<host> <port>'.  QEMU's own NBD client serves
        # it, so no kernel nbd module is needed.
        parts = rest.replace(":", " ").split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ConfigError(f"Invalid disk specifier {entry!r}: nbd: needs '<host> <port>'")
        return "nbd", f"{parts[0]} {parts[1]}", "raw"
    if kind in _FORMAT_PREFIXES:
        if not rest:
            raise ConfigError(f"Invalid disk specifier {entry!r}: {kind}: needs a path")
        return "tap", rest, _FORMAT_PREFIXES[kind]
    raise ConfigError(f"Invalid disk specifier {entry!r}: unknown type {kind!r}")


def parse_disk(entry: str) -> DiskSpec:
    if not isinstance(entry, str):
        raise ConfigError(f"Invalid disk specifier {entry!r}: expected a string")
    if is_xl_disk(entry):
        return parse_xl_disk(entry)
    fields = entry.split(",")
    if len(fields) not in (3, 4, 5):
        raise ConfigError(f"Invalid disk specifier {entry!r}: expected 'type:target,vdev,mode'")
    uname, vdev, mode = (f.strip() for f in fields[:3])
    backend = fields[3].strip() if len(fields) > 3 and fields[3].strip() else "0"
    return disk_from_parts(uname, vdev, mode, backend, entry)


def disk_from_parts(uname: str, vdev: str, mode: str, backend: str = "0", entry: str | None = None) -> DiskSpec:
    """A disk from its uname, vdev and mode (the xm spec's fields, or SXP's)."""
    entry = entry if entry is not None else f"{uname},{vdev},{mode}"
    kind, target, fmt = parse_uname(uname, entry)
    ioemu = False
    if vdev.startswith("ioemu:"):
        ioemu, vdev = True, vdev[len("ioemu:"):]
    devtype = "disk"
    if ":" in vdev:
        vdev, devtype = vdev.split(":", 1)
        if devtype not in ("disk", "cdrom"):
            raise ConfigError(f"Invalid disk specifier {entry!r}: unknown device type {devtype!r}")
    if not _VDEV_RE.match(vdev) and not vdev.isdigit():
        raise ConfigError(f"Invalid disk specifier {entry!r}: bad virtual device {vdev!r} (use hdX, sdX or xvdX)")
    if mode not in ("r", "w", "w!"):
        raise ConfigError(f"Invalid disk specifier {entry!r}: Invalid mode {mode!r} (use r, w or w!)")
    if kind == "" and devtype != "cdrom":
        raise ConfigError(f"Invalid disk specifier {entry!r}: an empty target is only allowed for a cdrom")
    return DiskSpec(uname, kind, target, fmt, vdev, mode, devtype, ioemu, backend)


VIF_KEYS = ("type", "mac", "bridge", "ip", "script", "backend", "vifname", "rate", "model",
            "accel", "policy", "label", "be_mac")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
# Xen's rate grammar: <n>[GMK](B|b)/s[@<n>[m|u]s]; B is bytes, b bits,
# multipliers are powers of 1000, the credit interval defaults to 50 ms.
_RATE_RE = re.compile(r"^([0-9]+)([GMK]?)([Bb])/s(?:@([0-9]+)([mu]?)s)?$")
# Linux interface names: at most 15 bytes, no '/', ':', ',' (QEMU's option
# separator) or white space, and not '.' or '..'.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@+-]{1,15}$")
# Emulated NIC models QEMU offers on PCI; 'virtio' names the PV NIC.
NIC_MODELS = {"virtio": "virtio-net-pci", "virtio-net": "virtio-net-pci", "virtio-net-pci": "virtio-net-pci",
              "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139", "ne2k_pci": "ne2k_pci",
              "pcnet": "pcnet", "i82551": "i82551", "i82557b": "i82557b", "i82559er": "i82559er",
              "vmxnet3": "vmxnet3"}


def parse_rate(text: str) -> tuple[int, int]:
    """A vif rate ('10Mb/s', '1MB/s@20ms') as (bytes per second, interval in microseconds)."""
    m = _RATE_RE.match(text.strip())
    if not m:
        raise ConfigError(f"bad rate {text!r} (expected e.g. 10Mb/s, 500KB/s or 1MB/s@20ms)")
    n, mult, unit, every, every_unit = m.groups()
    bps = int(n) * {"": 1, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3}[mult]
    if unit == "b":
        bps //= 8
    interval = 50_000 if every is None else int(every) * {"": 1_000_000, "m": 1000, "u": 1}[every_unit]
    if bps <= 0 or interval <= 0:
        raise ConfigError(f"bad rate {text!r}: must be more than zero")
    return bps, interval


def valid_ifname(name: str) -> bool:
    return bool(_IFNAME_RE.match(name)) and name not in (".", "..")


def _check_vif_value(k: str, v: str) -> str | None:
    """Why value *v* of vif key *k* is unusable, or None."""
    if k == "mac":
        if not _MAC_RE.match(v):
            return f"bad mac {v!r}"
        if int(v[:2], 16) & 1:
            return f"bad mac {v!r}: a multicast address cannot name a NIC"
    elif k in ("bridge", "vifname"):
        if not valid_ifname(v):
            return f"bad {k} {v!r}: not a valid interface name (1-15 letters, digits, . _ - @ +)"
    elif k == "ip":
        for addr in v.split():
            try:
                net = ipaddress.ip_network(addr, strict=False)
            except ValueError:
                net = None
            if net is None or net.version != 4:
                return f"bad ip {addr!r}: expected an IPv4 address or network"
        if not v.split():
            return "ip: empty"
    elif k == "rate":
        try:
            parse_rate(v)
        except ConfigError as e:
            return str(e)
    elif k == "model":
        if v not in NIC_MODELS:
            return f"unknown model {v!r} (use one of {', '.join(sorted(NIC_MODELS))})"
    elif k == "type":
        if v not in ("ioemu", "vif", "netfront"):
            return f"bad type {v!r} (use ioemu or vif)"
    elif k == "backend":
        if v not in ("0", "Domain-0"):
            return f"backend {v!r}: only Domain-0 (0) serves network backends"
    elif k == "script":
        if not v or any(c.isspace() for c in v):
            return f"bad script {v!r}"
    return None


def parse_vif(entry: str) -> dict:
    if not isinstance(entry, str):
        raise ConfigError(f"Invalid vif specifier {entry!r}: expected a string")
    out: dict[str, str] = {}
    for part in entry.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ConfigError(f"Invalid vif specifier {entry!r}: {part} should be a pair, separated by an equals sign.")
        k, v = (x.strip() for x in part.split("=", 1))
        if k not in VIF_KEYS:
            raise ConfigError(f"Invalid vif specifier {entry!r}: Invalid vif option: {k}")
        why = _check_vif_value(k, v)
        if why:
            raise ConfigError(f"Invalid vif specifier {entry!r}: {why}")
        out[k] = v
    return out


def vif_model(spec: dict, hvm: bool = False) -> str:
    """The QEMU device for a vif: its model, else virtio (rtl8139 for an HVM type=ioemu NIC)."""
    if "model" in spec:
        return NIC_MODELS[spec["model"]]
    if hvm and spec.get("type") == "ioemu":
        return "rtl8139"
    return "virtio-net-pci"


# ---------------------------------------------------------------- xl disks
_XL_FORMATS = {"raw": "raw", "qcow": "qcow", "qcow2": "qcow2", "vhd": "vpc", "qed": "qed"}
_XL_ACCESS = {"ro": "r", "r": "r", "rw": "w", "w": "w"}


def is_xl_disk(entry: str) -> bool:
    """xl's disk syntax: keyed (target=, vdev=, ...) or four positional fields."""
    if not isinstance(entry, str):
        return False
    parts = [p.strip() for p in entry.split(",")]
    if any("=" in p for p in parts):
        return True
    return len(parts) == 4 and parts[1] in _XL_FORMATS


def parse_xl_disk(entry: str) -> DiskSpec:
    """xl-disk-configuration: [key=val|flag,]* [target,[format,[vdev,[access]]]] [target=...]."""
    keys: dict[str, str] = {}
    positional: list[str] = []
    rest = entry
    if "target=" in entry:
        # xl: target= swallows the rest of the string, commas included.  Being
        # kind to 'target=X,vdev=...' (target first, as people write it), a
        # following ',<known key>=' still ends the target.
        head, _, target = entry.partition("target=")
        if head and not head.rstrip().endswith(","):
            raise ConfigError(f"Invalid disk specifier {entry!r}: target= must start a field")
        m = re.search(r",\s*(?:vdev|format|access|devtype|backend|backendtype|script|specification)=", target)
        tail = ""
        if m:
            target, tail = target[:m.start()], target[m.start() + 1:]
        rest, keys["target"] = ",".join(x for x in (head.rstrip().rstrip(","), tail) if x), target
    cdrom = False
    for part in [p.strip() for p in rest.split(",")] if rest else []:
        if "=" in part:
            k, v = (x.strip() for x in part.split("=", 1))
            if k not in ("vdev", "format", "access", "devtype", "backend", "backendtype", "script",
                         "specification"):
                raise ConfigError(f"Invalid disk specifier {entry!r}: unknown key {k!r}")
            keys[k] = v
        elif part in ("cdrom",):
            cdrom = True
        elif part in ("direct-io-safe", "discard", "no-discard", "trusted", "untrusted"):
            continue
        else:
            positional.append(part)
    names = ("target", "format", "vdev", "access")
    for k, v in zip(names, positional):
        if v:
            keys.setdefault(k, v)
    if len(positional) > 4:
        raise ConfigError(f"Invalid disk specifier {entry!r}: too many positional fields")
    vdev = keys.get("vdev")
    if not vdev:
        raise ConfigError(f"Invalid disk specifier {entry!r}: vdev is required")
    if keys.get("devtype") == "cdrom":
        cdrom = True
    fmt = keys.get("format", "raw")
    if fmt not in _XL_FORMATS:
        raise ConfigError(f"Invalid disk specifier {entry!r}: format: unknown format {fmt!r}")
    access = keys.get("access", "r" if cdrom else "rw")
    if access not in _XL_ACCESS:
        raise ConfigError(f"Invalid disk specifier {entry!r}: access: expected ro or rw, got {access!r}")
    target = keys.get("target", "")
    # The deprecated xm-style prefixes are accepted inside target too.
    for pre in ("raw:", "qcow2:", "vhd:", "aio:", "tapdisk:", "tap2:", "ioemu:", "file:", "phy:"):
        if target.startswith(pre):
            if pre[:-1] in _XL_FORMATS:
                fmt = pre[:-1]
            target = target[len(pre):]
    if not _VDEV_RE.match(vdev):
        raise ConfigError(f"Invalid disk specifier {entry!r}: vdev: bad virtual device {vdev!r}")
    kind = "" if not target else ("phy" if target.startswith("/dev/") else ("file" if fmt == "raw" else "tap"))
    if kind == "" and not cdrom:
        raise ConfigError(f"Invalid disk specifier {entry!r}: target is required")
    uname = f"{kind}:{target}" if kind in ("phy", "file") else (f"tap:{fmt}:{target}" if target else "")
    return DiskSpec(uname, kind, target, _XL_FORMATS[fmt], vdev, _XL_ACCESS[access],
                    "cdrom" if cdrom else "disk", False, keys.get("backend", "0"))


# ---------------------------------------------------------------- CPU sets
MAX_CPU = 4095        # Xen's largest NR_CPUS


def parse_cpuset(spec: str, what: str = "cpus") -> set[int]:
    """'0-3,5,^1' / 'all' / 'all,^7' -> a set of CPU numbers (Xen and xl syntax)."""
    if not isinstance(spec, str):
        raise ConfigError(f"{what}: expected a string such as '0-3,^1', got {spec!r}")
    include: set[int] = set()
    exclude: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        neg = part.startswith("^")
        body = part[1:] if neg else part
        if body == "all":
            rng = set(range(0, 64))
        else:
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", body)
            if not m:
                raise ConfigError(f"{what}: bad CPU list {spec!r} (near {part!r})")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise ConfigError(f"{what}: bad CPU range {part!r} in {spec!r}")
            if hi > MAX_CPU:
                # Else '0-99999999999' builds a set until memory runs out (found by fuzzing).
                raise ConfigError(f"{what}: CPU {hi} out of range 0-{MAX_CPU} in {spec!r}")
            rng = set(range(lo, hi + 1))
        (exclude if neg else include).update(rng)
    if not include and exclude:
        include = set(range(0, 64))
    return include - exclude


def format_cpuset(cpus: set[int]) -> str:
    """Ranges string as Xen prints affinity: '0-1,4'."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def disk_number(vdev: str) -> int:
    """Xen's device number for a vdev (blkdev_name_to_number)."""
    # ASCII digits only: str.isdigit() and \d also take '⒊' or '٣', which int() refuses.
    m = re.fullmatch(r"(hd|sd|xvd)([a-z]+)([0-9]*)", vdev)
    if vdev.isascii() and vdev.isdigit():
        return int(vdev)
    if not m:
        raise ConfigError(f"bad virtual device {vdev!r}")
    kind, letters, part = m.groups()
    disk = 0
    for ch in letters:
        disk = disk * 26 + (ord(ch) - ord("a") + 1)
    disk -= 1
    part = int(part or 0)
    if kind == "hd":
        majors = (3, 22, 33, 34, 56, 57, 88, 89, 90, 91)
        if disk // 2 >= len(majors) or part > 63:
            raise ConfigError(f"bad virtual device {vdev!r}")
        return majors[disk // 2] * 256 + (disk % 2) * 64 + part
    if kind == "sd":
        if part > 15:
            raise ConfigError(f"bad virtual device {vdev!r}")
        major = 8 if disk < 16 else 65 + (disk - 16) // 16
        return major * 256 + (disk % 16) * 16 + part
    if disk < 16 and part <= 15:
        return (202 << 8) | (disk << 4) | part
    return (1 << 28) | (disk << 8) | part


# ------------------------------------------------------------------- PCI
_PCI_RE = re.compile(r"^(?:([0-9a-fA-F]{1,4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])"
                     r"(?:@([0-9a-fA-F]{1,2}))?$")


@dataclass
class PciSpec:
    domain: int
    bus: int
    slot: int
    func: int
    vslot: int | None = None
    opts: dict = field(default_factory=dict)

    @property
    def bdf(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.func:x}"

    def to_sxp(self) -> list:
        dev = ["dev", ["domain", hex(self.domain)], ["bus", hex(self.bus)], ["slot", hex(self.slot)],
               ["func", hex(self.func)]]
        if self.vslot is not None:
            dev.append(["vslot", hex(self.vslot)])
        dev += [[k, v] for k, v in self.opts.items()]
        return ["device", ["pci", dev]]


def parse_pci(entry) -> PciSpec:
    """'[DDDD:]BB:SS.F[@VSLOT][,msitranslate=0|1][,power_mgmt=0|1]' (3.4) or 'BUS,DEV,FUNC' (3.0)."""
    if not isinstance(entry, str):
        raise ConfigError(f"Invalid pci specifier {entry!r}: expected a string")
    text = entry.strip()
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 3 and all(re.fullmatch(r"(0x)?[0-9a-fA-F]+", p) for p in parts):
        bus, slot, func = (int(p, 16) for p in parts)
        if bus > 0xff or slot > 0x1f or func > 7:
            raise ConfigError(f"Invalid pci specifier {entry!r}: bus, device or function out of range")
        return PciSpec(0, bus, slot, func)
    m = _PCI_RE.match(parts[0])
    if not m:
        raise ConfigError(f"Invalid pci specifier {entry!r}: expected [DDDD:]BB:SS.F")
    dom, bus, slot, func, vslot = m.groups()
    spec = PciSpec(int(dom or "0", 16), int(bus, 16), int(slot, 16), int(func, 16),
                   int(vslot, 16) if vslot else None)
    if spec.slot > 0x1f:
        raise ConfigError(f"Invalid pci specifier {entry!r}: slot {spec.slot:#x} out of range (max 0x1f)")
    for opt in parts[1:]:
        if "=" not in opt:
            raise ConfigError(f"Invalid pci specifier {entry!r}: option {opt!r} should be key=value")
        k, v = (x.strip() for x in opt.split("=", 1))
        if k not in ("msitranslate", "power_mgmt"):
            raise ConfigError(f"Invalid pci specifier {entry!r}: unknown option {k!r}")
        if v not in ("0", "1"):
            raise ConfigError(f"Invalid pci specifier {entry!r}: {k} must be 0 or 1")
        spec.opts[k] = int(v)
    return spec


def pci_from_sxp(dev: list) -> PciSpec:
    """(dev (domain 0x0)(bus 0x1)(slot 0x0)(func 0x0)[(vslot ..)]) -> PciSpec."""
    f = {x[0]: x[1] for x in dev[1:] if isinstance(x, list) and len(x) > 1}
    try:
        spec = PciSpec(int(f.get("domain", "0"), 16), int(f["bus"], 16), int(f["slot"], 16),
                       int(f["func"], 16), int(f["vslot"], 16) if "vslot" in f else None)
    except (KeyError, ValueError):
        raise ConfigError(f"Invalid pci device in SXP: {dev!r}") from None
    spec.opts = {k: int(v) for k, v in f.items() if k in ("msitranslate", "power_mgmt")}
    return spec


# ------------------------------------------------------------------ vTPM
@dataclass
class VtpmSpec:
    """A vTPM: Xen 3's 'instance=N,backend=0' or xl's 'backend=0,uuid=U'."""
    instance: int | None = None
    uuid: str | None = None
    backend: str = "0"

    def to_sxp(self) -> list:
        dev: list = ["vtpm"]
        if self.instance is not None:
            dev.append(["instance", self.instance])
        if self.uuid is not None:
            dev.append(["uuid", self.uuid])
        dev.append(["backend", self.backend])
        return ["device", dev]

    def to_text(self) -> str:
        parts = [f"instance={self.instance}"] if self.instance is not None else []
        if self.uuid is not None:
            parts.append(f"uuid={self.uuid}")
        return ",".join(parts + [f"backend={self.backend}"])


def parse_vtpm(entry) -> VtpmSpec:
    if not isinstance(entry, str):
        raise ConfigError(f"Invalid vtpm specifier {entry!r}: expected a string")
    import uuid as uuidlib
    spec = VtpmSpec()
    for part in entry.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ConfigError(f"Invalid vtpm specifier {entry!r}: {part} should be key=value")
        k, v = (x.strip() for x in part.split("=", 1))
        if k == "instance":
            if not v.isdigit() or len(v) > 9:
                raise ConfigError(f"Invalid vtpm specifier {entry!r}: instance must be a number, got {v!r}")
            spec.instance = int(v)
        elif k == "uuid":
            try:
                spec.uuid = str(uuidlib.UUID(v))
            except ValueError:
                raise ConfigError(f"Invalid vtpm specifier {entry!r}: not a UUID: {v!r}") from None
        elif k == "backend":
            if v not in ("0", "Domain-0"):
                raise ConfigError(f"Invalid vtpm specifier {entry!r}: backend {v!r}: only Domain-0 (0) "
                                  "runs vTPMs")
            spec.backend = "0"
        elif k in ("type", "backend_type"):
            continue        # Xen's vtpm type / xl's backend type: one kind here (swtpm)
        else:
            raise ConfigError(f"Invalid vtpm specifier {entry!r}: unknown key {k!r}")
    return spec
