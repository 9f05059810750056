"""Builder for pyxen's default guest image (``pyxen-image build``).

The image is what a domain boots when its config names no kernel of its
own: Debian's cloud kernel (as shipped ``vmlinuz`` plus the extracted ELF
``vmlinux`` that QEMU can start through the PVH entry point) and a small
busybox initramfs (``initrd.img``) holding just the virtio/ACPI drivers, an
``/init`` that can switch to a ``root=`` disk named the Xen way, and a
serial-console login.  Everything lands in one directory with a
``manifest.json`` describing it; a rebuild is skipped while the inputs are
unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pyxen.hypervisor.qemu import kernel as kfile

# Bump when the builder changes what it puts into the image, so existing
# images get rebuilt.
BUILDER_VERSION = "1"

DEFAULT_DEST = Path("/var/lib/pyxen/images/default")
METAPACKAGE = "linux-image-cloud-amd64"
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


class BuildError(Exception):
    """A build step failed; the message says what to do about it."""


@dataclass
class KernelSource:
    """An unpacked linux-image package."""

    root: Path
    package: str
    version: str           # Debian package version, e.g. 6.1.192-2
    kernel_version: str    # uname -r, e.g. 6.1.0-56-cloud-amd64
    vmlinuz: Path
    modules_dir: Path


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
# Kernel package


def _run(argv: list[str], cwd: Path | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, cwd=cwd, input=input, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise BuildError(f"{argv[0]} not found: {exc}") from None


def _apt_hint(stderr: str) -> str:
    text = stderr.strip()
    if any(s in text for s in ("Unable to locate package", "has no installation candidate",
                               "No packages found", "Can't select candidate")):
        return (f"{text}\nThe apt package lists look missing or stale: run "
                f"'apt-get update' first.")
    return text


def resolve_kernel_package(metapackage: str = METAPACKAGE) -> tuple[str, str]:
    """Name and candidate version of the versioned linux-image package the
    metapackage (the cloud one by default) currently depends on, asked from
    apt without downloading anything."""
    proc = _run(["apt-cache", "depends", metapackage])
    pkg = None
    for line in proc.stdout.decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("Depends:"):
            cand = line.split(":", 1)[1].strip().strip("<>")
            if cand.startswith("linux-image-"):
                pkg = cand
                break
    if proc.returncode != 0 or pkg is None:
        raise BuildError(f"cannot resolve {metapackage}: "
                         + _apt_hint(proc.stderr.decode(errors="replace")
                                     or "apt-cache depends found no linux-image dependency"))
    proc = _run(["apt-cache", "policy", pkg])
    version = None
    for line in proc.stdout.decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
    if not version or version == "(none)":
        raise BuildError(f"{pkg} has no installation candidate; run 'apt-get update' first.")
    return pkg, version


def download_kernel_deb(pkg: str, workdir: Path) -> Path:
    proc = _run(["apt-get", "download", pkg], cwd=workdir)
    debs = sorted(workdir.glob(f"{pkg}_*.deb"))
    if proc.returncode != 0 or not debs:
        raise BuildError(f"apt-get download {pkg} failed: "
                         + _apt_hint(proc.stderr.decode(errors="replace")))
    return debs[0]


def deb_field(deb: Path, name: str) -> str:
    proc = _run(["dpkg-deb", "-f", str(deb), name])
    if proc.returncode != 0:
        raise BuildError(f"cannot read {deb}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode().strip()


def unpack_kernel_deb(deb: Path, workdir: Path) -> KernelSource:
    root = workdir / "pkg"
    root.mkdir()
    proc = _run(["dpkg-deb", "-x", str(deb), str(root)])
    if proc.returncode != 0:
        raise BuildError(f"dpkg-deb -x {deb} failed: {proc.stderr.decode(errors='replace').strip()}")
    package = deb_field(deb, "Package")
    version = deb_field(deb, "Version")
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError(f"{deb} holds no boot/vmlinuz-*; is it a linux-image package?")
    vmlinuz = kernels[-1]
    kver = vmlinuz.name[len("vmlinuz-"):]
    for base in ("lib/modules", "usr/lib/modules"):
        mdir = root / base / kver
        if mdir.is_dir():
            break
    else:
        raise BuildError(f"{deb} has no modules directory for {kver}")
    return KernelSource(root, package, version, kver, vmlinuz, mdir)


# --------------------------------------------------------------------------
# Modules


def _mod_name(path_or_name: str) -> str:
    base = os.path.basename(path_or_name)
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def _read_module(path: Path) -> bytes:
    """Module bytes, decompressed: busybox insmod wants a plain ELF."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        proc = _run(["zstd", "-dcq"], input=data)
        if proc.returncode != 0:
            raise BuildError(f"cannot decompress {path}")
        return proc.stdout
    return data


def _modinfo_depends(elf: bytes) -> list[str]:
    """The depends= entry of an ELF64 module's .modinfo section."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return []
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    secs = []
    for i in range(shnum):
        off = shoff + i * shentsize
        name, _type, _flags, _addr, soff, size = struct.unpack_from("<IIQQQQ", elf, off)
        secs.append((name, soff, size))
    strtab_off = secs[shstrndx][1]
    for name, soff, size in secs:
        end = elf.index(b"\0", strtab_off + name)
        if elf[strtab_off + name:end] == b".modinfo":
            for item in elf[soff:soff + size].split(b"\0"):
                if item.startswith(b"depends="):
                    deps = item[len(b"depends="):].decode()
                    return [d for d in deps.split(",") if d]
    return []


def resolve_modules(ksrc: KernelSource, wanted=MODULES) -> tuple[list[tuple[str, Path]], list[str], list[str]]:
    """Work out which module files to ship and the order to insmod them.

    Returns (ordered [(relative path, file)], built-in names, missing names).
    Dependencies come from modules.dep when the package has one, else from
    each module's own modinfo (Debian's package leaves depmod to postinst)."""
    mdir = ksrc.modules_dir
    index: dict[str, str] = {}
    for p in sorted((mdir / "kernel").rglob("*.ko*")):
        index.setdefault(_mod_name(p.name), str(p.relative_to(mdir)))
    builtin = set()
    bfile = mdir / "modules.builtin"
    if bfile.exists():
        builtin = {_mod_name(line.strip()) for line in bfile.read_text().splitlines() if line.strip()}
    depfile = mdir / "modules.dep"
    deps_of: dict[str, list[str]] = {}
    if depfile.exists():
        for line in depfile.read_text().splitlines():
            if ":" in line:
                mod, deps = line.split(":", 1)
                deps_of[_mod_name(mod)] = [_mod_name(d) for d in deps.split()]

    def deps(name: str) -> list[str]:
        if name not in deps_of:
            deps_of[name] = [_mod_name(d) for d in
                             _modinfo_depends(_read_module(mdir / index[name]))]
        return deps_of[name]

    order: list[str] = []
    built_in: list[str] = []
    missing: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name in visiting:
            return
        if name not in index:
            (built_in if name in builtin else missing).append(name)
            return
        visiting.add(name)
        for d in deps(name):
            visit(d)
        visiting.discard(name)
        order.append(name)

    for w in wanted:
        visit(_mod_name(w))
    return [(index[n], mdir / index[n]) for n in order], built_in, missing


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

    mods, built_in, missing = resolve_modules(ksrc)
    base = f"lib/modules/{ksrc.kernel_version}"
    fs.add_dir(base)
    order = []
    for rel, path in mods:
        if rel.endswith((".xz", ".zst", ".gz")):
            rel = rel.rsplit(".", 1)[0]
        fs.add_file(f"{base}/{rel}", _read_module(path), 0o644)
        order.append(rel)
    fs.add_file(f"{base}/load-order", "".join(f"{r}\n" for r in order).encode())
    nfs_mods, _, nfs_missing = resolve_modules(ksrc, NFS_MODULES)
    nfs_order = []
    for rel, path in nfs_mods:
        if rel.endswith((".xz", ".zst", ".gz")):
            rel = rel.rsplit(".", 1)[0]
        if rel not in order:
            fs.add_file(f"{base}/{rel}", _read_module(path), 0o644)
            nfs_order.append(rel)
    fs.add_file(f"{base}/nfs-load-order", "".join(f"{r}\n" for r in nfs_order).encode())
    missing = missing + [m for m in nfs_missing if m not in missing]
    hw_mods, _, hw_missing = resolve_modules(ksrc, HW_MODULES)
    hw_order = []
    for rel, path in hw_mods:
        if rel.endswith((".xz", ".zst", ".gz")):
            rel = rel.rsplit(".", 1)[0]
        if rel not in order:
            if rel not in nfs_order:
                fs.add_file(f"{base}/{rel}", _read_module(path), 0o644)
            hw_order.append(rel)
    fs.add_file(f"{base}/hw-load-order", "".join(f"{r}\n" for r in hw_order).encode())
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


# --------------------------------------------------------------------------
# Manifest and the build itself


def load_manifest(dest: Path) -> dict | None:
    try:
        return json.loads((Path(dest) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _files_intact(dest: Path, manifest: dict) -> bool:
    for name, info in (manifest.get("files") or {}).items():
        p = dest / name
        try:
            if p.stat().st_size != info["size"] or kfile.file_sha256(p) != info["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return bool(manifest.get("files"))


def _password_matches(manifest: dict, password: str | None) -> bool:
    stored = manifest.get("root_password_hash")
    if password is None:
        return not manifest.get("password_set")
    if not manifest.get("password_set") or not stored or not stored.startswith("$6$"):
        return False
    salt = stored.split("$")[2]
    try:
        return crypt_password(password, salt) == stored
    except BuildError:
        return False


def is_up_to_date(dest: Path, package: str, version: str, password: str | None) -> bool:
    m = load_manifest(dest)
    if not m:
        return False
    return (m.get("builder_version") == BUILDER_VERSION
            and m.get("kernel_package") == package
            and m.get("package_version") == version
            and m.get("inputs_sha256") == inputs_digest()
            and _password_matches(m, password)
            and _files_intact(dest, m))


@contextlib.contextmanager
def _dest_lock(dest: Path):
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build_image(dest: Path, password: str | None = None, force: bool = False,
                kernel_deb: Path | None = None, log=print, kernel_package: str = METAPACKAGE) -> dict:
    """Build (or confirm up to date) the image in *dest*; returns the
    manifest.  Raises BuildError with an actionable message on failure."""
    dest = Path(dest)
    if kernel_deb is not None:
        kernel_deb = Path(kernel_deb)
        if not kernel_deb.is_file():
            raise BuildError(f"{kernel_deb}: no such file")
    with _dest_lock(dest):
        if kernel_deb is not None:
            package, version = deb_field(kernel_deb, "Package"), deb_field(kernel_deb, "Version")
        else:
            package, version = resolve_kernel_package(kernel_package)
        if not force and is_up_to_date(dest, package, version, password):
            log(f"pyxen-image: {dest} is up to date ({package} {version}); nothing to do "
                f"(use --force to rebuild)")
            return load_manifest(dest)

        with tempfile.TemporaryDirectory(prefix="pyxen-image-") as tmp:
            work = Path(tmp)
            if kernel_deb is None:
                log(f"pyxen-image: downloading {package} {version}")
                deb = download_kernel_deb(package, work)
            else:
                deb = kernel_deb
            ksrc = unpack_kernel_deb(deb, work)
            pw_hash = crypt_password(password) if password is not None else None
            fs, order, built_in, missing, hw_missing = build_initramfs(ksrc, pw_hash)
            cpio = fs.to_cpio()
            initrd = compress(cpio, INITRD_COMPRESSION)

            # Drop the manifest first: if we die half-way, the next run sees
            # no manifest and rebuilds instead of trusting mixed files.
            with contextlib.suppress(FileNotFoundError):
                (dest / "manifest.json").unlink()
            secret_mode = 0o600 if pw_hash else 0o644
            kfile.atomic_copy(ksrc.vmlinuz, dest / "vmlinuz")
            vmlinux_tmp = work / "vmlinux"
            files = ["vmlinuz", "initrd.img"]
            pvh = False
            if kfile.extract_vmlinux(ksrc.vmlinuz, vmlinux_tmp):
                kfile.atomic_copy(vmlinux_tmp, dest / "vmlinux")
                pvh = kfile.has_pvh_note(dest / "vmlinux")
                files.insert(1, "vmlinux")
            else:
                log("pyxen-image: warning: could not extract vmlinux; only vmlinuz is usable")
                with contextlib.suppress(FileNotFoundError):
                    (dest / "vmlinux").unlink()
            kfile.atomic_write(dest / "initrd.img", initrd, mode=secret_mode)

        manifest = {
            "builder_version": BUILDER_VERSION,
            "kernel_version": ksrc.kernel_version,
            "kernel_package": package,
            "package_version": version,
            "inputs_sha256": inputs_digest(),
            "password_set": pw_hash is not None,
            "initrd_compression": INITRD_COMPRESSION,
            "initrd_uncompressed_size": len(cpio),
            "pvh": pvh,
            "modules": order,
            "modules_builtin": built_in,
            "modules_missing": missing,
            "hw_modules_missing": hw_missing,
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "files": {n: {"sha256": kfile.file_sha256(dest / n), "size": (dest / n).stat().st_size}
                      for n in files},
        }
        if pw_hash:
            # Same secret as the shadow entry inside initrd.img (equally
            # protected: both files are 0600); lets a rebuild with the same
            # password be recognised as a no-op.
            manifest["root_password_hash"] = pw_hash
        kfile.atomic_write(dest / "manifest.json",
                           (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
                           mode=secret_mode)
        if missing:
            log(f"pyxen-image: warning: modules not found in {package}: {', '.join(missing)}")
        log(f"pyxen-image: built {dest}: kernel {ksrc.kernel_version} ({package} {version}), "
            f"vmlinux {'with' if pvh else 'without'} PVH entry, initrd.img "
            f"{manifest['files']['initrd.img']['size'] / 1048576:.1f} MiB {INITRD_COMPRESSION} "
            f"({len(order)} modules), root password {'set' if pw_hash else 'empty'}")
        return manifest


def default_dest() -> Path:
    env = os.environ.get("PYXEN_IMAGES")
    return Path(env) if env else DEFAULT_DEST


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyxen-image",
                                     description="Build pyxen's default guest kernel and initramfs, and HVM boot media.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the default guest image")
    b.add_argument("--dest", type=Path, default=None,
                   help="output directory (default: $PYXEN_IMAGES or %s)" % DEFAULT_DEST)
    b.add_argument("--password", default=None,
                   help="root password (default: root logs in without one)")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    b.add_argument("--kernel-deb", type=Path, default=None,
                   help="use this linux-image .deb instead of downloading one")
    b.add_argument("--kernel-package", default=METAPACKAGE,
                   help="the kernel metapackage to download (default %(default)s; linux-image-amd64 "
                        "also has drivers for HVM guests' emulated NICs)")
    for cmd, what in (("hvm-disk", "a bootable raw disk image (MBR, FAT16, SYSLINUX)"),
                      ("hvm-iso", "a bootable ISO (ISOLINUX)")):
        h = sub.add_parser(cmd, help=f"build {what} of the default guest, for HVM domains")
        h.add_argument("--source", type=Path, default=None,
                       help="the image to boot (default: $PYXEN_IMAGES/hvm-kernel if built, "
                            "else $PYXEN_IMAGES/default)")
        h.add_argument("--out", type=Path, default=None,
                       help="output file (default: $PYXEN_IMAGES/hvm/%s)"
                       % ("disk.img" if cmd == "hvm-disk" else "cdrom.iso"))
        h.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    if args.command in ("hvm-disk", "hvm-iso"):
        from . import hvm
        src = args.source or hvm.default_source()
        try:
            if args.command == "hvm-disk":
                hvm.build_disk(src, args.out or hvm.hvm_dir() / "disk.img", force=args.force)
            else:
                hvm.build_iso(src, args.out or hvm.hvm_dir() / "cdrom.iso", force=args.force)
        except hvm.MediaError as exc:
            print(f"pyxen-image: error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        build_image(args.dest or default_dest(), password=args.password, force=args.force,
                    kernel_deb=args.kernel_deb, kernel_package=args.kernel_package)
    except BuildError as exc:
        print(f"pyxen-image: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
