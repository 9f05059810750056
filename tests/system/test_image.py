"""System tests for the default guest image: boot it under QEMU/TCG, log in
on the serial console, check the kernel and drivers, power it off through
the ACPI power button (QMP system_powerdown), and boot a virtio disk as
root= named the Xen way (serial=sda1 -> /dev/sda1)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pyxen.hypervisor.qemu.kernel import FAST_CMDLINE
from pyxen.image import build

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 20.0
PROMPT = re.compile(rb"\n[\w.-]+:[^\n#]*# ")  # "pyxen:~# "

pytestmark = pytest.mark.skipif(shutil.which(QEMU) is None, reason="QEMU not installed")


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> tuple[Path, dict]:
    """The shared image when `make image` already built it, else a fresh
    build in a temporary directory."""
    dest = build.DEFAULT_DEST
    manifest = build.load_manifest(dest)
    if manifest and all((dest / f).exists() for f in manifest.get("files", {})):
        return dest, manifest
    dest = tmp_path_factory.mktemp("image")
    manifest = build.build_image(dest)
    return dest, manifest


class Guest:
    """A QEMU process with its serial console on a pipe and QMP on a
    Unix socket; console output is collected by a reader thread."""

    def __init__(self, image: tuple[Path, dict], workdir: Path, append: str = "",
                 extra: list[str] | None = None):
        dest, manifest = image
        kernel = dest / ("vmlinux" if "vmlinux" in manifest["files"] else "vmlinuz")
        self.qmp_path = workdir / "qmp.sock"
        argv = [
            QEMU, "-machine", "pc", "-accel", "tcg,tb-size=64", "-m", "128", "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-kernel", str(kernel), "-initrd", str(dest / "initrd.img"),
            "-append", f"console=ttyS0 {FAST_CMDLINE} {append}".strip(),
        ] + (extra or [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.buf = bytearray()
        self.pos = 0  # expect() consumes output up to here
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.seq = 0

    def _read(self) -> None:
        while True:
            data = self.proc.stdout.read1(65536)
            with self.cond:
                if not data:
                    self.cond.notify_all()
                    return
                self.buf += data
                self.cond.notify_all()

    def console(self) -> str:
        with self.cond:
            return bytes(self.buf).decode(errors="replace")

    def expect(self, pattern: bytes | re.Pattern, timeout: float = BOOT_TIMEOUT) -> bytes:
        """Wait for *pattern* after the last match; returns the output
        between the last match and the end of this one."""
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(self.buf, self.pos)
                if m:
                    out = bytes(self.buf[self.pos:m.end()])
                    self.pos = m.end()
                    return out
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    tail = bytes(self.buf[-3000:]).decode(errors="replace")
                    raise AssertionError(f"timed out waiting for {rx.pattern!r}; console:\n{tail}")
                self.cond.wait(min(left, 0.5))

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def login(self) -> None:
        self.expect(b"login: ")
        self.send("root\n")
        out = self.expect(PROMPT)
        assert b"Password" not in out, "root was asked for a password"

    def run(self, command: str, timeout: float = 10.0) -> str:
        """Run a shell command on the console and return its output.  Call
        only at a prompt; returns at the next one, so typed input is never
        echoed twice (once by the tty, once by the shell's line editor)."""
        self.seq += 1
        end = f"__END{self.seq}__"
        # The quotes keep the echoed command line from matching the marker.
        echo = f"echo __E''ND{self.seq}__"
        self.send(f"{command}; {echo}\n")
        out = self.expect(re.compile(rb"\n" + end.encode() + rb"(?=\r?\n)"), timeout)
        self.expect(PROMPT, timeout)
        text = out.decode(errors="replace").replace("\r", "")
        text = text[text.index(echo) + len(echo):]  # drop the echoed command
        return text[:text.rfind(end)].strip("\n")

    def powerdown(self, timeout: float = 20.0) -> dict:
        """Press the ACPI power button through QMP and return the data of
        the SHUTDOWN event that follows.  QEMU then exits by itself (it runs
        without -no-shutdown)."""
        from qemu.qmp import QMPClient

        async def press() -> dict:
            qmp = QMPClient("pyxen-test")
            await qmp.connect(str(self.qmp_path))
            try:
                with qmp.listener("SHUTDOWN") as listener:
                    await qmp.execute("system_powerdown")
                    event = await asyncio.wait_for(listener.get(), timeout)
                return dict(event.get("data", {}))
            finally:
                try:
                    await qmp.disconnect()
                except Exception:  # QEMU may already be gone: fine here
                    pass

        return asyncio.run(press())

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def guests(tmp_path):
    started: list[Guest] = []

    def start(image, **kw) -> Guest:
        g = Guest(image, tmp_path, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        g.kill()


def test_boot_login_powerdown(image, guests):
    _dest, manifest = image
    g = guests(image)
    g.expect(b"pyxen-init: started")
    g.login()
    assert g.run("uname -r") == manifest["kernel_version"]
    drivers = g.run("ls /sys/bus/virtio/drivers").split()
    assert "virtio_blk" in drivers, drivers
    assert "virtio_net" in drivers, drivers
    # acpid must be up, or the power button below would do nothing.
    assert g.run("pidof acpid"), g.console()[-2000:]

    # The host only presses the button; the SHUTDOWN that follows must be
    # the guest powering itself off after running its shutdown actions.
    event = g.powerdown()
    assert event.get("guest") is True, event
    assert event.get("reason") == "guest-shutdown", event
    assert g.wait_exit(20) == 0, g.console()[-2000:]
    assert "pyxen: shutting down" in g.console()


def test_probe_powers_off(image, guests):
    g = guests(image, append="pyxen.probe")
    g.expect(b"pyxen-init: started")
    g.expect(b"pyxen-init: probe ok")
    assert g.wait_exit(15) == 0
    assert "login:" not in g.console()


def make_root_disk(image, workdir: Path) -> Path:
    """An ext4 image holding the initramfs tree plus /etc/marker, made
    with mkfs.ext4 -d (no loop mount needed)."""
    if shutil.which("mkfs.ext4") is None or shutil.which("cpio") is None:
        pytest.skip("mkfs.ext4 or cpio missing")
    dest, manifest = image
    initrd = (dest / "initrd.img").read_bytes()
    decompress = {
        b"\x02\x21\x4c\x18": ["lz4", "-dc"],
        b"\x28\xb5\x2f\xfd": ["zstd", "-dcq"],
        b"\x1f\x8b": ["gzip", "-dc"],
        b"\xfd7zXZ": ["xz", "-dc"],
    }
    cpio = initrd
    for magic, argv in decompress.items():
        if initrd.startswith(magic):
            cpio = subprocess.run(argv, input=initrd, capture_output=True, check=True).stdout
    root = workdir / "rootfs"
    root.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=cpio, cwd=root, check=True)
    (root / "etc" / "marker").write_text("pyxen root disk marker\n")
    disk = workdir / "root.img"
    with open(disk, "wb") as f:
        f.truncate(48 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), "-L", "pyxroot", str(disk)],
                   check=True)
    return disk


def test_root_disk_by_xen_name(image, guests, tmp_path):
    disk = make_root_disk(image, tmp_path)
    g = guests(image, append="root=/dev/sda1", extra=[
        "-drive", f"file={disk},if=none,id=d0,format=raw",
        "-device", "virtio-blk-pci,drive=d0,serial=sda1",
    ])
    g.login()
    assert g.run("cat /etc/marker") == "pyxen root disk marker"
    mounts = g.run("cat /proc/mounts")
    assert re.search(r"^/dev/sda1 / ext4 ro[, ]", mounts, re.M), mounts
    assert g.run("readlink /dev/sda1") == "vda"
    g.powerdown()
    assert g.wait_exit(20) == 0, g.console()[-2000:]
    # Mounted read-only and powered off cleanly: the filesystem is clean.
    fsck = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True)
    assert fsck.returncode == 0, fsck.stdout.decode() + fsck.stderr.decode()


def test_bad_root_falls_back_to_initramfs(image, guests):
    g = guests(image, append="root=/dev/sdz9 rootdelay=1")
    g.expect(b"pyxen-init: cannot mount root /dev/sdz9: ")
    g.login()
    assert g.run("echo ok") == "ok"
