"""Debian's linux-image packages for the guest images: which versioned
package a metapackage names, downloading and unpacking it without
installing, and which of its kernel modules to ship in what order.

The image builder (:mod:`pyxen.image.build`) and the initramfs assembler
(:mod:`pyxen.image.initramfs`) use it; nothing here knows about the image
layout.
"""

from __future__ import annotations

import gzip
import lzma
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

METAPACKAGE = "linux-image-cloud-amd64"


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




# --------------------------------------------------------------------------
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


def resolve_modules(ksrc: KernelSource, wanted) -> tuple[list[tuple[str, Path]], list[str], list[str]]:
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
