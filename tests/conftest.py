"""Shared fixtures: real xend instances on throw-away PYXEN_ROOTs.

Each ``host`` is one xend with its own root under /tmp (kept short: QEMU's
Unix socket paths must fit in 107 bytes), TCG unless a test asks otherwise,
booting the default guest image from the shared images directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from pyxen.paths import DEFAULT_IMAGES
from pyxen.testing.guest import GuestConsole

IMAGES = Path(os.environ.get("PYXEN_IMAGES") or DEFAULT_IMAGES)
IMAGE = IMAGES / "default"


@pytest.fixture(scope="session")
def image() -> Path:
    """The default guest image (``make image`` builds it; built here if missing)."""
    if not (IMAGE / "manifest.json").exists():
        subprocess.run(["pyxen-image", "build"], check=True)
    return IMAGE


@pytest.fixture(scope="session")
def hvm_media(image) -> dict[str, Path]:
    """The HVM boot media (``make hvm-images``; built here if missing):
    {"disk": raw MBR disk image, "iso": El Torito ISO}.  Shared and read-only:
    a test that writes copies the disk first."""
    out = {"disk": IMAGES / "hvm" / "disk.img", "iso": IMAGES / "hvm" / "cdrom.iso"}
    for what, cmd in (("disk", "hvm-disk"), ("iso", "hvm-iso")):
        if not out[what].exists():
            # The source is pyxen-image's default: images/hvm-kernel when built, else the default image.
            subprocess.run(["pyxen-image", cmd, "--out", str(out[what])], check=True)
    return out


def _cwd_under(proc: Path, root: Path) -> bool:
    """xend starts QEMU in its run dir (whose path its argv no longer names)."""
    try:
        return os.readlink(proc / "cwd").startswith(f"{root}/")
    except OSError:
        return False


class Host:
    def __init__(self, root: Path, image: Path, xend_config: str = "(accel tcg)\n",
                 netns: str | None = None):
        self.root = root
        self.image = image
        # A network namespace xend (and so its QEMUs, taps and scripts) runs
        # in: network tests keep every bridge, tap and packet inside it.
        self.netns = netns
        self.env = dict(os.environ, PYXEN_ROOT=str(root), PYXEN_IMAGES=str(image.parent))
        (root / "etc/xen").mkdir(parents=True)
        (root / "etc/xen/xend-config.sxp").write_text(xend_config)

    def run(self, *argv: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
        res = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        return res

    def xm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.run("xm", *args, check=check, timeout=timeout)

    def xend(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ("ip", "netns", "exec", self.netns) if self.netns else ()
        return self.run(*prefix, "xend", *args, check=check)

    def config(self, name: str, **values) -> Path:
        """Write an xm config booting the default image; values override."""
        v = {"kernel": str(self.image / "vmlinuz"), "ramdisk": str(self.image / "initrd.img"),
             "memory": 128, "name": name}
        v.update(values)
        text = "".join(f"{k} = {val!r}\n" for k, val in v.items())
        path = self.root / "etc/xen" / name
        path.write_text(text)
        return path

    def console(self, dom: str) -> GuestConsole:
        return GuestConsole(dom, env=self.env)

    def domains(self) -> dict[str, dict]:
        """``xm list`` parsed the way xm-test does: columns split on blanks."""
        out = self.xm("list").stdout.splitlines()
        rows = {}
        for line in out[1:]:
            name, domid, mem, vcpus, state, t = line.split()
            rows[name] = {"id": int(domid), "mem": int(mem), "vcpus": int(vcpus),
                          "state": state, "time": float(t)}
        return rows

    def log_tail(self, n: int = 40) -> str:
        """The end of this host's xend.log (for a failure's message)."""
        try:
            lines = (self.root / "var/log/xen/xend.log").read_text(errors="replace").splitlines()
        except OSError as e:
            return f"(no xend.log: {e})"
        return "\n".join(lines[-n:])

    def qemu_pids(self) -> list[int]:
        """QEMU processes belonging to this root (by their socket paths)."""
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in cmd and (f"{self.root}/" in cmd or _cwd_under(d, self.root)):
                pids.append(int(d.name))
        return pids

    def cleanup(self) -> None:
        if self.run("xend", "status").returncode == 0:
            for name in self.domains():
                if name != "Domain-0":
                    self.xm("destroy", name, check=False)
            self.run("xend", "stop")
        for pid in self.qemu_pids():
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def make_host(image):
    hosts = []

    def make(xend_config: str = "(accel tcg)\n", start: bool = True, netns: str | None = None) -> Host:
        root = Path(tempfile.mkdtemp(prefix="px", dir="/tmp"))
        h = Host(root, image, textwrap.dedent(xend_config), netns)
        hosts.append(h)
        if start:
            h.xend("start")
        return h
    yield make
    for h in hosts:
        h.cleanup()


@pytest.fixture
def host(make_host) -> Host:
    return make_host()


@pytest.fixture
def bridge():
    """An isolated bridge (no uplink, no address) for guests' vifs, removed
    afterwards.  xend stays in the host's namespaces (a netns xend would get
    a mount namespace of its own, which the full-disk tests cannot use)."""
    name = f"pxbr{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)
