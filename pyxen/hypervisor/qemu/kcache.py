"""Boot-kernel cache: boot a bzImage through its uncompressed vmlinux.

Under TCG the decompression stub of a bzImage costs about a second of
emulated time, and an ELF vmlinux with a PVH note boots through the PVH
entry without it.  When a config names a bzImage, the kernel is extracted
once into a cache keyed by the file's sha256 and the ELF is booted instead;
kernels without a PVH note (or that cannot be extracted) are booted as given.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

from . import kernel as kmod

log = logging.getLogger("pyxen.qemu")


_memo: dict[tuple, str] = {}


def boot_kernel(path: str, cache_dir: Path) -> str:
    """Return the file QEMU should boot for the kernel at *path*."""
    p = Path(path)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            # A FIFO would block the read below, /dev/zero never end it.
            raise kmod.KernelError(f"kernel {path} is not a regular file")
        # Hashing a 14 MiB kernel costs tens of ms per create: remember the
        # answer for this exact file (same inode, size and mtime).
        memo_key = (str(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, str(cache_dir))
        hit = _memo.get(memo_key)
        if hit is not None and Path(hit).exists():
            return hit
        if not kmod.is_bzimage(p):
            return path
        digest = kmod.file_sha256(p)
    except OSError:
        return path
    result = _boot_kernel(p, path, digest, cache_dir)
    _memo[memo_key] = result
    return result


def _boot_kernel(p: Path, path: str, digest: str, cache_dir: Path) -> str:
    elf = cache_dir / f"{digest}.vmlinux"
    verdict = cache_dir / f"{digest}.json"
    try:
        if verdict.exists():
            info = json.loads(verdict.read_text())
            return str(elf) if info.get("pvh") and elf.exists() else path
        cache_dir.mkdir(parents=True, exist_ok=True)
        ok = kmod.extract_vmlinux(p, elf) and kmod.has_pvh_note(elf)
        if not ok:
            try:
                elf.unlink()
            except FileNotFoundError:
                pass
        tmp = verdict.with_suffix(".tmp%d" % os.getpid())
        tmp.write_text(json.dumps({"source": str(p), "pvh": bool(ok)}))
        os.replace(tmp, verdict)
        log.info("kernel %s: %s", p, "booting its PVH vmlinux" if ok else "booting as given")
        return str(elf) if ok else path
    except kmod.KernelError as e:
        raise kmod.KernelError(f"kernel {path}: {e}") from None
    except (OSError, ValueError) as e:
        log.warning("kernel cache for %s unavailable: %s", p, e)
        return path
