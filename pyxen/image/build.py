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
import json
import os
import sys
import tempfile
from pathlib import Path

from pyxen.hypervisor.qemu import kernel as kfile

from .initramfs import BUILDER_VERSION, INITRD_COMPRESSION, build_initramfs, compress, crypt_password, inputs_digest
from .kernelpkg import (METAPACKAGE, BuildError, deb_field, download_kernel_deb, resolve_kernel_package,
                        unpack_kernel_deb)

DEFAULT_DEST = Path("/var/lib/pyxen/images/default")


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
