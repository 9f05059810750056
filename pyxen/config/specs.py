"""Device spec grammars from xm config files: disk and vif entries.

Each parser takes the string a user wrote and returns a typed spec, or
raises ConfigError naming the entry and what is wrong with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, asdict

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
    kind: str           # phy | file | tap | '' (empty)
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
    if kind in _FORMAT_PREFIXES:
        if not rest:
            raise ConfigError(f"Invalid disk specifier {entry!r}: {kind}: needs a path")
        return "tap", rest, _FORMAT_PREFIXES[kind]
    raise ConfigError(f"Invalid disk specifier {entry!r}: unknown type {kind!r}")


def parse_disk(entry: str) -> DiskSpec:
    if not isinstance(entry, str):
        raise ConfigError(f"Invalid disk specifier {entry!r}: expected a string")
    fields = entry.split(",")
    if len(fields) not in (3, 4, 5):
        raise ConfigError(f"Invalid disk specifier {entry!r}: expected 'type:target,vdev,mode'")
    uname, vdev, mode = (f.strip() for f in fields[:3])
    backend = fields[3].strip() if len(fields) > 3 and fields[3].strip() else "0"
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
        if k == "mac" and not _MAC_RE.match(v):
            raise ConfigError(f"Invalid vif specifier {entry!r}: bad mac {v!r}")
        out[k] = v
    return out
