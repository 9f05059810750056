"""The default guest's initramfs: a busybox tree, the shipped files under
``initramfs/``, the kernel modules /init loads, packed as a reproducible
newc cpio archive and compressed the way the guest kernel unpacks fastest.

:func:`inputs_digest` names everything that decides the archive apart from
the kernel and the password, so :mod:`pyxen.image.build` can skip a
rebuild while it is unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .kernelpkg import BuildError, KernelSource, _read_module, _run, resolve_modules

# Bump when the builder changes what it puts into the image, so existing
# images get rebuilt.
BUILDER_VERSION = "1"

BUSYBOX = Path("/bin/busybox")

# The source tree of the initramfs, shipped inside the package.
INITRAMFS_SRC = Path(__file__).resolve().parent / "initramfs"

# Kernel modules the guest needs, loaded in dependency order by /init.
# Names as in modinfo (either - or _).  Built-in ones are skipped.
MODULES = (
    "virtio_pci",       # virtio devices on PCI (pulls virtio, virtio_ring, ...)
    "virtio_blk",       # disks (xm "disk = [...]")
    "virtio_net",       # NICs (xm "vif = [...]"); pulls net_failover, failover
    "virtio_console",   # hvc0 and virtio-serial channels
    "virtio_balloon",   # xm mem-set
    "virtio-rng",       # entropy from the host, so early boot never blocks
    "virtio_scsi",      # SCSI-attached disks ...
    "sd_mod",           # ... which are useless without the SCSI disk driver
    "button",           # ACPI power button -> acpid -> poweroff
    "evdev",            # /dev/input/event* for acpid
    "pvpanic-pci",      # tell QEMU about guest panics
    "af_packet",        # udhcpc's raw sockets (built in on Debian)
    "isofs",            # CD/ISO images
)

# Drivers for emulated PC hardware, for HVM guests (the manual's A.2
# devices): the IDE/SATA disks of ioemu:hda and the type=ioemu NICs
# (rtl8139, e1000, ne2k_pci).  Loaded by /init only when the kernel command
# line says pyxen.hw=1 (the HVM boot media do): every pc machine has a PIIX
# IDE controller, and probing its empty channels would slow each PV boot.
# Shipped when the kernel package has them: Debian's cloud kernel has only
# ata_piix; `make hvm-images` builds the HVM media on the generic kernel
# (--kernel-package linux-image-amd64), which has them all.
HW_MODULES = ("ata_piix", "ahci", "e1000", "8139cp", "8139too", "ne2k-pci")

# NFS root (root=/dev/nfs): shipped, but loaded by /init only for an NFS
# root (lib/modules/<kver>/nfs-load-order), so other boots pay nothing.
NFS_MODULES = ("nfsv4", "nfsv3")

# initrd compression: the one the guest kernel unpacks fastest under TCG.
# Measured in the guest (dmesg "Trying to unpack rootfs" -> "Freeing initrd
# memory", 3.6 MiB cpio, three runs each):
#   none 0.064 s (3.6 MiB)   lz4 -l -9 0.07-0.10 s (1.67 MiB)
#   gzip -9 0.105 s (1.44 MiB)   zstd -19 0.10-0.18 s (1.23 MiB)
#   xz -9: kernel panics at 128 MiB (64 MiB dictionary does not fit)
# The unpack runs asynchronously, so the end-to-end boot difference is
# within noise; lz4 wins on unpack time and is also the fastest to build.
INITRD_COMPRESSION = "lz4"



@dataclass
class CpioEntry:
    """One archive member: path without leading slash, full st_mode, file
    contents (or symlink target) and device numbers for device nodes."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


@dataclass
class Initramfs:
    """The initramfs tree being assembled in memory; parent directories are
    created implicitly so the archive never depends on host file modes."""

    entries: dict[str, CpioEntry] = field(default_factory=dict)

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in self.entries:
                self.entries[parent] = CpioEntry(parent, stat.S_IFDIR | 0o755)
        if name not in self.entries:
            self.entries[name] = CpioEntry(name, stat.S_IFDIR | mode)
        else:
            self.entries[name].mode = stat.S_IFDIR | mode

    def _parent(self, name: str) -> None:
        if "/" in name:
            self.add_dir(os.path.dirname(name))

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self._parent(name)
        self.entries[name] = CpioEntry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        self._parent(name)
        self.entries[name] = CpioEntry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = name.strip("/")
        self._parent(name)
        self.entries[name] = CpioEntry(name, stat.S_IFCHR | mode, b"", (major, minor))

    def to_cpio(self) -> bytes:
        """newc archive, everything owned by root:root with mtime 0 so equal
        inputs give byte-identical archives.  Parents sort before children."""
        out = io.BytesIO()
        ino = 1
        for name in sorted(self.entries):
            e = self.entries[name]
            _cpio_header(out, ino, e.mode, len(e.data), e.rdev, e.name)
            out.write(e.data)
            _pad4(out)
            ino += 1
        _cpio_header(out, 0, 0, 0, (0, 0), "TRAILER!!!", nlink=1)
        # The kernel reads the archive in 512-byte blocks like cpio does.
        rem = out.tell() % 512
        if rem:
            out.write(b"\0" * (512 - rem))
        return out.getvalue()


def _pad4(out: io.BytesIO) -> None:
    rem = out.tell() % 4
    if rem:
        out.write(b"\0" * (4 - rem))


def _cpio_header(out: io.BytesIO, ino: int, mode: int, size: int,
                 rdev: tuple[int, int], name: str, nlink: int | None = None) -> None:
    bname = name.encode() + b"\0"
    if nlink is None:
        nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(bname), 0)
    out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
    out.write(bname)
    _pad4(out)



# --------------------------------------------------------------------------
# Initramfs


def _source_files() -> list[Path]:
    return sorted(p for p in INITRAMFS_SRC.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def inputs_digest() -> str:
    """Hash of everything that decides the initramfs apart from the kernel
    and the password: the shipped tree, busybox, module list, compression
    and builder version."""
    h = hashlib.sha256()
    h.update(f"builder={BUILDER_VERSION}\ncompression={INITRD_COMPRESSION}\n".encode())
    h.update(("modules=" + ",".join(MODULES) + "\n").encode())
    h.update(("nfs-modules=" + ",".join(NFS_MODULES) + "\n").encode())
    h.update(("hw-modules=" + ",".join(HW_MODULES) + "\n").encode())
    for p in _source_files():
        rel = p.relative_to(INITRAMFS_SRC).as_posix()
        h.update(f"file={rel}\n".encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    try:
        h.update(b"busybox=" + hashlib.sha256(BUSYBOX.read_bytes()).digest())
    except OSError:
        h.update(b"busybox=missing")
    return h.hexdigest()


def _check_busybox() -> list[str]:
    if not BUSYBOX.exists():
        raise BuildError(f"{BUSYBOX} missing: install busybox-static")
    with open(BUSYBOX, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            raise BuildError(f"{BUSYBOX} is not a 64-bit ELF binary")
        phoff = struct.unpack_from("<Q", head, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        if struct.unpack_from("<I", table, i * phentsize)[0] == 3:  # PT_INTERP
            raise BuildError(f"{BUSYBOX} is dynamically linked: install busybox-static")
    proc = _run([str(BUSYBOX), "--list-full"])
    if proc.returncode != 0:
        raise BuildError(f"{BUSYBOX} --list-full failed")
    return [line.strip() for line in proc.stdout.decode().splitlines() if "/" in line.strip()]


def crypt_password(password: str, salt: str | None = None) -> str:
    """SHA-512 crypt hash ($6$...) for /etc/shadow."""
    argv = ["openssl", "passwd", "-6", "-stdin"]
    if salt:
        argv[3:3] = ["-salt", salt]
    if shutil.which("openssl"):
        proc = _run(argv, input=password.encode() + b"\n")
        out = proc.stdout.decode().strip()
        if proc.returncode == 0 and out.startswith("$6$"):
            return out
    argv = [str(BUSYBOX), "mkpasswd", "-m", "sha512", "-s"]
    if salt:
        argv += ["-S", salt]
    proc = _run(argv, input=password.encode() + b"\n")
    out = proc.stdout.decode().strip()
    if proc.returncode == 0 and out.startswith("$6$"):
        return out
    raise BuildError("cannot hash the password: need openssl or busybox mkpasswd")


def build_initramfs(ksrc: KernelSource, password_hash: str | None
                    ) -> tuple[Initramfs, list[str], list[str], list[str], list[str]]:
    fs = Initramfs()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev",
              "run", "mnt", "newroot", "var/log", "lib/modules"):
        fs.add_dir(d)
    fs.add_dir("tmp", 0o1777)
    fs.add_dir("root", 0o700)
    fs.add_symlink("var/run", "../run")
    # The kernel opens /dev/console for /init's stdio before devtmpfs exists.
    fs.add_chardev("dev/console", 5, 1, 0o600)

    applets = _check_busybox()
    fs.add_file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for path in applets:
        path = path.lstrip("/")
        if path != "bin/busybox":
            fs.add_symlink(path, "/bin/busybox")

    # An empty shadow password lets busybox login in without asking.  The
    # passwd field stays "x" either way: busybox's getpwuid() rejects an
    # empty one, which would leave uid 0 nameless (ls, id, ~ in the prompt).
    subst = {"@SHADOW_FIELD@": password_hash or ""}
    for src in _source_files():
        rel = src.relative_to(INITRAMFS_SRC).as_posix()
        data = src.read_bytes()
        if rel.endswith(".in"):
            rel = rel[:-3]
            text = data.decode()
            for k, v in subst.items():
                text = text.replace(k, v)
            data = text.encode()
        # Modes are decided here, not taken from the installed package files,
        # because wheels and checkouts do not reliably keep exec bits.
        if rel == "etc/shadow":
            mode = 0o600
        elif data.startswith(b"#!"):
            mode = 0o755
        else:
            mode = 0o644
        fs.add_file(rel, data, mode)

    # Three load orders (/init reads each): always, NFS root only, emulated
    # hardware only; a module two of them need is shipped once.
    base = f"lib/modules/{ksrc.kernel_version}"
    fs.add_dir(base)
    shipped: set[str] = set()

    def ship(wanted, order_file: str, skip: tuple[list[str], ...] = ()) -> tuple[list[str], list[str], list[str]]:
        mods, built_in, missing = resolve_modules(ksrc, wanted)
        order = []
        for rel, path in mods:
            if rel.endswith((".xz", ".zst", ".gz")):
                rel = rel.rsplit(".", 1)[0]
            if any(rel in s for s in skip):
                continue
            if rel not in shipped:
                fs.add_file(f"{base}/{rel}", _read_module(path), 0o644)
                shipped.add(rel)
            order.append(rel)
        fs.add_file(f"{base}/{order_file}", "".join(f"{r}\n" for r in order).encode())
        return order, built_in, missing

    order, built_in, missing = ship(MODULES, "load-order")
    _, _, nfs_missing = ship(NFS_MODULES, "nfs-load-order", (order,))
    missing = missing + [m for m in nfs_missing if m not in missing]
    _, _, hw_missing = ship(HW_MODULES, "hw-load-order", (order,))
    # Emulated-hardware drivers the kernel lacks are expected (the cloud
    # kernel has none of the NICs): recorded in the manifest, not warned about.
    return fs, order, built_in, missing, hw_missing


# Compressors for the initrd (see INITRD_COMPRESSION for measurements):
# the CLI argv, or None when Python does it.  lz4 must use the legacy frame
# format (-l): the kernel's initramfs unpacker only knows that one.
_COMPRESSORS = {
    "gzip": None,
    "lz4": ["lz4", "-l", "-9", "-c"],
    "zstd": ["zstd", "-19", "-c", "-q"],
    # The kernel only verifies crc32 and must fit the dictionary in guest RAM.
    "xz": ["xz", "--check=crc32", "--lzma2=preset=6,dict=1MiB", "-c"],
    "none": None,
}


def compress(data: bytes, method: str) -> bytes:
    if method == "none":
        return data
    if method == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    argv = _COMPRESSORS[method]
    if shutil.which(argv[0]) is None:
        # Fall back to something Python can always do.
        return gzip.compress(data, compresslevel=9, mtime=0)
    proc = _run(argv, input=data)
    if proc.returncode != 0:
        raise BuildError(f"{argv[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
