"""HVM (Appendix A) settings: checking them and what they mean for a guest.

``DomainConfig.hvm`` keeps the (image (hvm ...)) keys as the user gave
them; this module checks their values when the config is built (so a bad
one is a one-line ConfigError naming the key) and answers the questions the
device-model builder asks: which firmware, which boot order, which disks
are IDE, where the CD-ROM is, whether there is a VNC or SDL display.
Nothing here knows QEMU's command line.
"""

from __future__ import annotations

import os

from .errors import ConfigError
from .specs import DiskSpec, parse_disk

FIRMWARES = {"seabios": "seabios", "rombios": "seabios", "bios": "seabios", "hvmloader": "seabios",
             "ovmf": "ovmf", "uefi": "ovmf"}
SOUND = ("sb16", "es1370", "ac97", "hda", "pcspk")
USB_DEVICES = ("tablet", "mouse")
SERIALS = ("pty", "none", "null")
# The emulated IDE controller's four places, in Xen's hda..hdd order.
IDE_SLOTS = ("hda", "hdb", "hdc", "hdd")
VGA_MEM = {"stdvga": (1, 2, 4, 8, 16, 32, 64, 128, 256), "cirrus": (4, 8, 16)}


def firmware_of(values: dict, kernel: str) -> str:
    """seabios | ovmf, from xl's bios= / firmware= or the loader in 'kernel'.

    Xen's kernel='/usr/lib/xen/boot/hvmloader' (or any other loader path)
    means the default BIOS; a kernel naming an OVMF image asks for UEFI."""
    asked = values.get("firmware") or values.get("bios")
    if asked not in (None, ""):
        key = "firmware" if values.get("firmware") else "bios"
        fw = FIRMWARES.get(str(asked).lower())
        if fw is None:
            raise ConfigError(f"{key}: expected seabios or ovmf, got {asked!r}")
        return fw
    base = os.path.basename(kernel or "").lower()
    return "ovmf" if base.startswith("ovmf") or "uefi" in base else "seabios"


VFB_KEYS = {"vnc": int, "sdl": int, "vncdisplay": int, "vncunused": int, "vnclisten": str,
            "vncpasswd": str, "display": str, "xauthority": str, "keymap": str}


def from_vfb(entries: list) -> dict:
    """Xen 3.x's vfb = ['vnc=1, vncdisplay=3, ...'] as the HVM display keys
    (xm folded an HVM domain's vfb into its device-model settings)."""
    out: dict = {}
    for entry in entries:
        if not isinstance(entry, str):
            raise ConfigError(f"vfb: expected a string such as 'vnc=1', got {entry!r}")
        for part in (p.strip() for p in entry.split(",")):
            if not part:
                continue
            k, sep, v = (x.strip() for x in part.partition("="))
            if not sep or k not in VFB_KEYS and k != "type":
                raise ConfigError(f"vfb: bad entry {part!r} in {entry!r} (use vnc=1, vncdisplay=N, "
                                  "vnclisten=ADDR, vncpasswd=PW, vncunused=0|1, sdl=1, display=, keymap=)")
            if k == "type":      # 'type=vnc' / 'type=sdl' (3.0.x)
                if v not in ("vnc", "sdl"):
                    raise ConfigError(f"vfb: type must be vnc or sdl, got {v!r}")
                out[v] = 1
                continue
            try:
                out[k] = VFB_KEYS[k](v)
            except ValueError:
                raise ConfigError(f"vfb: {k} expects a number, got {v!r}") from None
    return out


def check(hvm: dict, disks: list[DiskSpec]) -> None:
    """Refuse HVM values that cannot be honoured (the key named in the error)."""
    boot = str(hvm.get("boot", "c"))
    if not boot or any(c not in "acdn" for c in boot) or len(set(boot)) != len(boot):
        raise ConfigError(f"boot: expected letters from a (floppy), c (disk), d (cdrom), n (network), "
                          f"each once, e.g. 'dc'; got {boot!r}")
    for s in sound_devices(hvm):
        if s not in SOUND:
            raise ConfigError(f"soundhw: unknown sound device {s!r} (use {', '.join(SOUND)} or all)")
    u = hvm.get("usbdevice")
    if u not in (None, "") and u not in USB_DEVICES:
        raise ConfigError(f"usbdevice: expected tablet or mouse, got {u!r}")
    s = hvm.get("serial")
    if s not in (None, "") and s not in SERIALS:
        raise ConfigError(f"serial: expected 'pty' (the serial port is the domain's console) or 'none', "
                          f"got {s!r}")
    vram = hvm.get("videoram")
    if vram is not None:
        card = "stdvga" if hvm.get("stdvga") else "cirrus"
        if vram not in VGA_MEM[card]:
            raise ConfigError(f"videoram: {vram} MiB is not possible for {card} "
                              f"(use one of {', '.join(map(str, VGA_MEM[card]))})")
    pw = hvm.get("vncpasswd")
    if pw and len(str(pw)) > 8:
        raise ConfigError("vncpasswd: VNC passwords are at most 8 characters")
    d = hvm.get("vncdisplay")
    if d is not None and not 0 <= d <= 99:
        raise ConfigError(f"vncdisplay: expected 0-99, got {d}")
    used = {x.vdev for x in disks}
    for x in disks:
        if x.devtype == "cdrom" and x.vdev not in IDE_SLOTS:
            raise ConfigError(f"disk {x.uname or x.vdev!r}: an HVM CD-ROM must be one of hda-hdd, not {x.vdev}")
    if hvm.get("cdrom") and "hdc" in used:
        raise ConfigError("cdrom: hdc (where Xen puts the CD-ROM) is already a disk of this domain")


def cdrom_disk(hvm: dict) -> DiskSpec | None:
    """The 'cdrom' key as the hdc CD-ROM it is in Xen (an ISO file or a device)."""
    path = hvm.get("cdrom")
    if not path:
        return None
    kind = "phy" if str(path).startswith("/dev/") else "file"
    return parse_disk(f"{kind}:{path},hdc:cdrom,r")


def all_disks(disks: list[DiskSpec], hvm: dict) -> list[DiskSpec]:
    cd = cdrom_disk(hvm)
    return list(disks) + ([cd] if cd else [])


def ide_slot(d: DiskSpec) -> int | None:
    """0-3 when the disk is on the emulated IDE controller (hda-hdd), else None
    (other names, e.g. xvdb or sdb, are PV disks: virtio, as PV-on-HVM drivers saw them)."""
    base = d.vdev.rstrip("0123456789")
    return IDE_SLOTS.index(base) if base in IDE_SLOTS else None


def sound_devices(hvm: dict) -> list[str]:
    s = str(hvm.get("soundhw") or "")
    if not s:
        return []
    if s == "all":
        return ["sb16", "es1370", "ac97", "hda"]
    return [x.strip() for x in s.split(",") if x.strip()]


def graphics(hvm: dict) -> bool:
    return not hvm.get("nographic")


def vnc_wanted(hvm: dict) -> bool:
    """A VNC server on 5900+display: vnc=1 (or a vncdisplay) and graphics."""
    return graphics(hvm) and bool(hvm.get("vnc") or hvm.get("vncdisplay") is not None)


def sdl_wanted(hvm: dict) -> bool:
    return graphics(hvm) and bool(hvm.get("sdl"))


def usb_wanted(hvm: dict) -> bool:
    return bool(hvm.get("usb") or hvm.get("usbdevice"))
