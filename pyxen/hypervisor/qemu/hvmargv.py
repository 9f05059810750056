"""The HVM part of a domain's QEMU command line: firmware, emulated devices,
display.

Pure functions of the config (``cfg.hvm``, checked by pyxen.config.hvmopts)
and the facts xend decided at start (``HvmFacts``).  Kept minimal for
TCG's sake: an i440FX PC, the IDE controller it has anyway, one VGA card
and only the extra devices a config asks for.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from ...config import hvmopts as hvmcfg
from ...config.domain import DomainConfig
from ...config.specs import DiskSpec
from . import optstr

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
VNC_TCP_ID = "vnc0"     # the user's VNC server (5900+display)
VNC_WEB_ID = "web"      # a Unix-socket one for xend's web console relay
VNC_TLS_ID = "vnctls0"  # the user's VNC server's TLS credentials


@dataclass
class HvmFacts:
    """What xend decided for this start of an HVM domain."""
    vnc_listen: str = "127.0.0.1"
    vnc_display: int = 0          # first display to try
    vnc_unused: bool = True       # try upwards from vnc_display
    vnc_password: bool = False    # set through QMP before the guest runs
    vnc_tls_dir: Path | None = None   # VNC over TLS: QEMU's x509 directory (xend/vnctls.py)
    vnc_tls_verify: bool = False      # ... and clients must show a certificate of its CA
    keymap: str = ""
    nvram: Path | None = None     # the domain's copy of the OVMF variable store
    sdl: bool = False
    env: dict | None = None       # QEMU's environment when it differs from xend's (SDL's X display)


def _opts(props: dict) -> str:
    return optstr.props(props)


def machine_suffix(cfg: DomainConfig) -> str:
    """Properties appended to -machine: ACPI and HPET as the config says
    (Xen's default is no HPET: one device less to emulate)."""
    h = cfg.hvm
    out = []
    if not h.get("acpi", 1):
        out.append("acpi=off")
    if not h.get("hpet", 0):
        out.append("hpet=off")
    if "pcspk" in hvmcfg.sound_devices(h):
        out.append("pcspk-audiodev=snd0")
    return "".join("," + x for x in out)


def cpu_flags(cfg: DomainConfig, accel: str) -> list[str]:
    h = cfg.hvm
    flags = []
    if not h.get("pae", 1):
        flags.append("-pae")
    if not h.get("apic", 1):
        flags.append("-apic")
    if h.get("viridian") and accel == "kvm":
        flags += ["hv-relaxed", "hv-vapic", "hv-spinlocks=0x1fff"]
    return flags


def boot_indexes(cfg: DomainConfig, disks: list[DiskSpec]) -> dict[str, int]:
    """Device id -> bootindex, from Xen's boot letters (a floppy, c first
    hard disk, d first CD-ROM, n the NICs).  bootindex works for SeaBIOS and
    OVMF alike, where -boot order= only reaches SeaBIOS."""
    order = str(cfg.hvm.get("boot", "c"))
    hds = sorted((d for d in disks if d.devtype != "cdrom"),
                 key=lambda d: (hvmcfg.ide_slot(d) is None, hvmcfg.ide_slot(d) or 0))
    cds = sorted((d for d in disks if d.devtype == "cdrom"), key=lambda d: hvmcfg.ide_slot(d) or 0)
    out: dict[str, int] = {}
    n = 1
    for c in order:
        ids = []
        if c == "a" and cfg.hvm.get("fda"):
            ids = ["fd0"]
        elif c == "c" and hds:
            ids = [f"vbd-{hds[0].vdev}"]
        elif c == "d" and cds:
            ids = [f"vbd-{cds[0].vdev}"]
        elif c == "n":
            ids = [f"nic{i}" for i in range(len(cfg.vifs))]
        for i in ids:
            out[i] = n
            n += 1
    return out


def disk_device_props(d: DiskSpec, bootindex: int | None) -> dict:
    """hda-hdd are emulated IDE disks / CD-ROMs; other names stay virtio."""
    slot = hvmcfg.ide_slot(d)
    if slot is None:
        props = {"driver": "virtio-blk-pci", "drive": f"d-{d.vdev}", "serial": d.vdev, "id": f"vbd-{d.vdev}"}
    else:
        props = {"driver": "ide-cd" if d.devtype == "cdrom" else "ide-hd", "bus": f"ide.{slot // 2}",
                 "unit": slot % 2, "id": f"vbd-{d.vdev}"}
        if d.target:
            props["drive"] = f"d-{d.vdev}"
    if bootindex is not None:
        props["bootindex"] = bootindex
    return props


def firmware_args(cfg: DomainConfig, facts: HvmFacts) -> list[str]:
    if cfg.hvm.get("firmware") != "ovmf":
        return []      # SeaBIOS is QEMU's own default
    return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={optstr.value(facts.nvram)}"]


def device_args(cfg: DomainConfig, facts: HvmFacts, run_dir: Path, boot: dict[str, int],
                fdsets: dict[str, int] | None = None) -> list[str]:
    """Display, VGA card, USB, sound, RTC and floppies (a floppy in
    *fdsets*, by its key fda/fdb, is opened from the descriptor xend passed)."""
    h = cfg.hvm
    a: list[str] = []
    if hvmcfg.graphics(h):
        if h.get("stdvga"):
            a += ["-device", "VGA" + (f",vgamem_mb={h['videoram']}" if h.get("videoram") else "")]
        else:
            a += ["-device", "cirrus-vga" + (f",vgamem_mb={h['videoram']}" if h.get("videoram") else "")]
        # Always a local display for xend (web console relay, screendumps
        # need none): a Unix socket only root can reach.
        sock = optstr.value(run_dir / "vnc.sock")     # = Runtime.vnc_sock
        a += ["-vnc", f"unix:{sock},id={VNC_WEB_ID}"]
        if hvmcfg.vnc_wanted(h):
            host = facts.vnc_listen
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            spec = f"{optstr.value(host)}:{facts.vnc_display},id={VNC_TCP_ID}"
            if facts.vnc_unused:
                spec += ",to=99"
            if facts.vnc_password:
                spec += ",password=on"
            if facts.vnc_tls_dir is not None:
                # Only the network display: xend's own Unix socket stays plain.
                a += ["-object", "tls-creds-x509," + _opts({
                    "id": VNC_TLS_ID, "dir": facts.vnc_tls_dir, "endpoint": "server",
                    "verify-peer": "on" if facts.vnc_tls_verify else "off"})]
                spec += f",tls-creds={VNC_TLS_ID}"
            a += ["-vnc", spec]
        if facts.keymap:
            a += ["-k", facts.keymap]
    if hvmcfg.usb_wanted(h):
        a += ["-device", "piix3-usb-uhci,id=usb"]
        dev = h.get("usbdevice")
        if dev:
            a += ["-device", f"usb-{optstr.value(dev)},bus=usb.0"]
    sound = hvmcfg.sound_devices(h)
    if sound:
        # The guest gets the cards; the host plays nothing (xend has no sound).
        a += ["-audiodev", "none,id=snd0"]
        for s in sound:
            if s == "hda":
                a += ["-device", "intel-hda,id=hda0", "-device", "hda-duplex,bus=hda0.0,audiodev=snd0"]
            elif s != "pcspk":
                a += ["-device", {"sb16": "sb16", "es1370": "ES1370", "ac97": "AC97"}[s] + ",audiodev=snd0"]
    base = "localtime" if h.get("localtime") else "utc"
    off = h.get("rtc_timeoffset") or 0
    if off:
        now = datetime.datetime.now() if base == "localtime" else datetime.datetime.utcnow()
        base = (now + datetime.timedelta(seconds=off)).strftime("%Y-%m-%dT%H:%M:%S")
    if base != "utc":
        a += ["-rtc", f"base={base}"]
    for unit, key in ((0, "fda"), (1, "fdb")):
        if h.get(key):
            fname = f"/dev/fdset/{fdsets[key]}" if fdsets and key in fdsets else h[key]
            a += ["-blockdev", f"driver=file,filename={optstr.value(fname)},node-name=f-{key}",
                  "-blockdev", f"driver=raw,file=f-{key},node-name=d-{key}",
                  "-device", f"floppy,unit={unit},drive=d-{key},id=fd{unit}"
                  + (f",bootindex={boot[f'fd{unit}']}" if f"fd{unit}" in boot else "")]
    return a
