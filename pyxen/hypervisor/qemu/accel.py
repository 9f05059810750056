"""Which accelerator really runs a guest here: KVM, or TCG emulation.

``/dev/kvm`` existing proves little: with broken nested virtualisation a KVM
guest hangs.  The probe boots the default guest image under KVM with a
deadline, waiting for its init to say ``pyxen-init: probe ok``.  The
verdict is cached by the caller (keyed by host kernel and QEMU version).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

PROBE_MARK = b"pyxen-init: probe ok"


def qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.replace("QEMU emulator version ", "").strip() or "unknown"


def _cpu_identity() -> str:
    """Digest of the first CPU's model and flags: a verdict taken on other
    CPU features (a microcode or BIOS change, a VM moved) is not trusted."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "unknown"
    first = text.split("\n\n", 1)[0]
    keep = [ln for ln in first.splitlines()
            if ln.split(":", 1)[0].strip() in ("vendor_id", "model name", "flags", "microcode")]
    return hashlib.sha256("\n".join(keep).encode()).hexdigest()[:16]


def _binary_identity(qemu: str) -> str:
    """Where the QEMU binary is and which file it is: a rebuilt package can
    keep its version string."""
    path = shutil.which(qemu) or qemu
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}: missing"
    return f"{os.path.realpath(path)} {st.st_size} {st.st_mtime_ns}"


def cache_key(qemu: str) -> dict:
    """What the cached verdict depends on: when any of it changes, xend
    probes again (`xend reprobe` forces it)."""
    return {"host_kernel": platform.release(), "qemu": qemu_version(qemu),
            "qemu_binary": _binary_identity(qemu), "cpu": _cpu_identity()}


def kvm_usable() -> tuple[bool, str]:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"/dev/kvm: {e.strerror}"
    os.close(fd)
    return True, ""


async def probe_kvm(qemu: str, kernel: Path, initrd: Path, timeout: float) -> tuple[bool, str]:
    """Boot the image under KVM; (True, detail) if its init ran in time."""
    ok, why = kvm_usable()
    if not ok:
        return False, why
    if not kernel.exists() or not initrd.exists():
        return False, f"no guest image to probe with ({kernel})"
    argv = [qemu, "-machine", "pc", "-accel", "kvm", "-cpu", "host", "-m", "128",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-kernel", str(kernel), "-initrd", str(initrd), "-no-reboot",
            "-append", "console=ttyS0 pyxen.probe panic=-1"]
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    seen = b""
    try:
        async def reader():
            nonlocal seen
            while True:
                chunk = await proc.stdout.read(4096)
                if not chunk:
                    return False
                seen = (seen + chunk)[-8192:]
                if PROBE_MARK in seen:
                    return True
        found = await asyncio.wait_for(reader(), timeout)
    except asyncio.TimeoutError:
        return False, f"KVM guest did not reach init within {timeout:.0f} s (broken nested virtualisation?)"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    if found:
        return True, f"KVM guest reached init in {time.monotonic() - t0:.2f} s"
    tail = seen.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return False, f"KVM probe failed: {tail[0]}"
