"""Bootable HVM test media built from the default guest: a disk and an ISO.

They carry the default guest's initramfs on the kernel ``default_source()``
names: an HVM guest is an emulated PC, so its kernel needs the drivers for
that PC's disks and NICs (``pyxen.hw=1`` on the command line loads them).

The manual's Appendix A.3 has the user partition a disk image, make a
filesystem, copy an OS in and install a bootloader.  ``pyxen-image
hvm-disk`` does those steps for the default guest without mounting
anything (so without root-only loop devices):

* the partition (FAT16) is made as its own file with ``mkfs.fat``, filled
  with ``mcopy`` (mtools) and given SYSLINUX's boot sector and
  ``ldlinux.sys`` by ``syslinux --install`` (the mtools installer, which
  works on a plain file);
* the disk is SYSLINUX's MBR code plus a partition table written here, the
  partition starting at 1 MiB.

``pyxen-image hvm-iso`` makes an El Torito CD (ISOLINUX, no emulation)
with ``xorriso``.  Both boot the default guest's kernel and initramfs with
``console=tty0 console=ttyS0``: the kernel's messages are on the screen and
the login is on the serial port, which is the HVM domain's console.

The FAT partition also holds ``startup.nsh``: with UEFI firmware (OVMF) and
no boot entry, the UEFI shell runs it and starts the same kernel through its
EFI stub, so the disk boots under SeaBIOS and OVMF alike.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from ..hypervisor.qemu import kernel as kfile
from ..paths import DEFAULT_IMAGES

SECTOR = 512
PART_START = 2048                      # sectors: the partition begins at 1 MiB
MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
# Kernel arguments: kernel messages on the VGA text screen and the serial
# port, /dev/console (the last one named, where init and getty talk) on the
# serial port; then the same boot-time savers the PV path uses.
# pyxen.hw=1: /init loads the drivers for emulated PC hardware (IDE, AHCI,
# rtl8139, e1000, ne2k_pci) that HVM guests have and PV guests do not.
APPEND = ("console=tty0 console=ttyS0,115200 tsc=reliable no_timer_check cryptomgr.notests 8250.nr_uarts=1 "
          "pyxen.hw=1")
# Debian packages that provide the tools; named in errors.
TOOLS = {"mkfs.fat": "dosfstools", "mcopy": "mtools", "syslinux": "syslinux",
         "xorriso": "xorriso"}
FILES = {MBR_CODE: "syslinux-common", ISOLINUX_BIN: "isolinux", LDLINUX_C32: "syslinux-common"}
VERSION = "2"   # 2: pyxen.hw=1 on the command line


class MediaError(Exception):
    pass


def hvm_dir() -> Path:
    return Path(os.environ.get("PYXEN_IMAGES") or DEFAULT_IMAGES) / "hvm"


def default_source() -> Path:
    """The image the HVM media are made from: ``hvm-kernel`` when built
    (`make hvm-images` builds it on Debian's generic kernel, which has the
    drivers for an emulated PC's IDE/SATA disks and rtl8139/e1000/ne2k NICs
    that the cloud kernel lacks), else the default image."""
    images = hvm_dir().parent
    if (images / "hvm-kernel" / "manifest.json").is_file():
        return images / "hvm-kernel"
    return images / "default"


def _need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            raise MediaError(f"{t} not found: apt-get install {TOOLS[t]}")
    for f, pkg in FILES.items():
        if not f.exists():
            raise MediaError(f"{f} not found: apt-get install {pkg}")


def _run(argv: list[str]) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise MediaError(f"{argv[0]} failed: {(p.stderr or p.stdout).strip()}")


def _source(src: Path) -> tuple[Path, Path]:
    k, i = src / "vmlinuz", src / "initrd.img"
    for f in (k, i):
        if not f.is_file():
            raise MediaError(f"{f} not found: build the default image first (pyxen-image build)")
    return k, i


def syslinux_cfg() -> str:
    # SERIAL first so the boot loader also talks on the console.
    return ("SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\nDEFAULT pyxen\n"
            "SAY pyxen HVM guest: booting the default kernel\n"
            f"LABEL pyxen\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {APPEND}\n")


def startup_nsh() -> str:
    return f"\\vmlinuz initrd=\\initrd.img {APPEND}\r\n"


def mbr(code: bytes, start: int, sectors: int, signature: int = 0x50595845) -> bytes:
    """A classic MBR: boot code, disk signature, one bootable FAT16 (LBA) entry.

    CHS fields hold the 'use LBA' marker (1023/254/63) as partitioning
    tools write for partitions beyond the CHS limit; SeaBIOS and SYSLINUX's
    MBR code read by LBA."""
    if len(code) > 440:
        raise MediaError("MBR boot code is larger than 440 bytes")
    chs = b"\xfe\xff\xff"
    entry = struct.pack("<B3sB3sII", 0x80, chs, 0x0E, chs, start, sectors)
    out = code.ljust(440, b"\0") + struct.pack("<IH", signature, 0) + entry + b"\0" * 48 + b"\x55\xaa"
    assert len(out) == SECTOR
    return out


def _manifest(path: Path, src: Path, kind: str) -> dict:
    k, i = _source(src)
    return {"kind": kind, "version": VERSION, "kernel": kfile.file_sha256(k), "initrd": kfile.file_sha256(i),
            "append": APPEND}


def _up_to_date(out: Path, want: dict) -> bool:
    try:
        return out.is_file() and json.loads(Path(f"{out}.json").read_text()) == want
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(out: Path):
    """One builder at a time per output directory (parallel test sessions)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _publish(tmp: Path, out: Path, want: dict) -> None:
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    kfile.atomic_write(Path(f"{out}.json"), (json.dumps(want, indent=1) + "\n").encode(), mode=0o644)


def build_disk(src: Path, out: Path, force: bool = False, size_mib: int = 0, log=print) -> Path:
    """A raw disk: MBR, one FAT16 partition with SYSLINUX, the kernel and initramfs."""
    _need("mkfs.fat", "mcopy", "syslinux")
    with _locked(out):
        return _build_disk(src, out, force, size_mib, log)


def _build_disk(src: Path, out: Path, force: bool, size_mib: int, log) -> Path:
    k, i = _source(src)
    want = _manifest(out, src, "disk")
    if not force and _up_to_date(out, want):
        log(f"pyxen-image: {out} is up to date")
        return out
    payload = k.stat().st_size + i.stat().st_size
    # Room for the payload plus a quarter, at least 32 MiB (FAT16's comfortable minimum).
    mib = size_mib or max(32, (payload * 5 // 4 >> 20) + 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyxen-hvm-") as tmp:
        t = Path(tmp)
        part = t / "part.img"
        part_sectors = mib * 2048 - PART_START
        # -h: hidden sectors = where the partition starts, as a BIOS boot
        # sector expects; -F 16: FAT16 (what SYSLINUX and UEFI both read).
        _run(["mkfs.fat", "-C", "-F", "16", "-h", str(PART_START), "-n", "PYXEN", str(part),
              str(part_sectors // 2)])
        (t / "syslinux.cfg").write_text(syslinux_cfg())
        (t / "startup.nsh").write_text(startup_nsh())
        _run(["mcopy", "-i", str(part), str(k), "::vmlinuz"])
        _run(["mcopy", "-i", str(part), str(i), "::initrd.img"])
        _run(["mcopy", "-i", str(part), str(t / "syslinux.cfg"), "::syslinux.cfg"])
        _run(["mcopy", "-i", str(part), str(t / "startup.nsh"), "::startup.nsh"])
        _run(["syslinux", "--install", str(part)])
        disk = out.with_name(f".{out.name}.tmp")
        with open(disk, "wb") as f:
            f.write(mbr(MBR_CODE.read_bytes(), PART_START, part_sectors))
            f.write(b"\0" * (PART_START - 1) * SECTOR)
            with open(part, "rb") as p:
                shutil.copyfileobj(p, f, 1 << 20)
        _publish(disk, out, want)
    log(f"pyxen-image: built {out} ({mib} MiB: MBR, FAT16 with SYSLINUX, the default guest)")
    return out


def build_iso(src: Path, out: Path, force: bool = False, log=print) -> Path:
    """An El Torito ISO 9660 image booting the default guest with ISOLINUX."""
    _need("xorriso")
    with _locked(out):
        return _build_iso(src, out, force, log)


def _build_iso(src: Path, out: Path, force: bool, log) -> Path:
    k, i = _source(src)
    want = _manifest(out, src, "iso")
    if not force and _up_to_date(out, want):
        log(f"pyxen-image: {out} is up to date")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyxen-hvm-") as tmp:
        root = Path(tmp) / "cd"
        (root / "isolinux").mkdir(parents=True)
        shutil.copy(ISOLINUX_BIN, root / "isolinux/isolinux.bin")
        shutil.copy(LDLINUX_C32, root / "isolinux/ldlinux.c32")
        (root / "isolinux/isolinux.cfg").write_text(syslinux_cfg())
        shutil.copy(k, root / "vmlinuz")
        shutil.copy(i, root / "initrd.img")
        iso = out.with_name(f".{out.name}.tmp")
        _run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", "PYXEN_HVM", "-J", "-R",
              "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
              "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", str(root)])
        _publish(iso, out, want)
    log(f"pyxen-image: built {out} (ISO 9660, ISOLINUX, the default guest)")
    return out
