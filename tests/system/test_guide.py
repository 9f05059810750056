"""Every runnable example of the user's guide, run as written.

One test per guide page: the page's console transcripts
(docs/guide/examples/<page>/*.console, in the order the page shows them)
run one command at a time through bash, as root, against real xends and
real TCG guests, and each command's output must match what the page says
(pyxen.testing.transcript has the format).  A guide page that stops
matching the software fails here.

Each page gets fresh hosts: a private PYXEN_ROOT per host name in its
transcripts (``#`` is the default host, ``hostb#`` a second one), every one
with ``(accel tcg)`` in its xend-config.sxp (this machine has no KVM), and
one private network namespace for the page, so the bridges, vnets and
addresses the examples make never touch the machine's own network.  Paths
the guide shows as a real host's (/etc/xen, /var/log/xen, /var/tmp, ...)
are moved under the host's root in commands, and moved back in the output;
/srv is one directory all hosts of a page share (shared storage).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from pyxen.testing import guide, transcript

# Paths on a real host that live under PYXEN_ROOT here.  The shared guest
# images (/var/lib/pyxen/images) stay where they are.
ROOTED = re.compile(r"(?<![\w./-])(?=/(?:etc/xen|var/log/xen|var/lib/pyxen/state|var/run/pyxen|var/tmp)(?:/|\b))")
# /srv is storage every host of a page shares (migration needs the same
# disk paths on both ends, and the hosts pass certificates through it).
SHARED = re.compile(r"(?<![\w./-])(?=/srv(?:/|\b))")
STEP_TIMEOUT = 300
# Pages run in the host's namespaces rather than a private network one:
# `ip netns exec` gives each command a mount namespace whose fresh /sys has
# no cgroup hierarchy, and the scheduler examples need the cpu controller.
# These pages make no bridge, address or listening socket.
HOST_NETWORK_PAGES = {"cpu-memory"}


def _pages() -> list[str]:
    return [p.stem for p in guide.pages("en") if guide.page_examples(p.stem)[1]]


class GuideHost:
    def __init__(self, name: str, netns: str | None, shared: Path):
        self.name = name
        self.netns = netns
        self.shared = shared
        self.root = Path(tempfile.mkdtemp(prefix="px", dir="/tmp"))   # short: QEMU socket paths
        for d in ("etc/xen", "var/tmp"):
            (self.root / d).mkdir(parents=True)
        (self.root / "etc/xen/xend-config.sxp").write_text("(accel tcg)\n")
        self.env = dict(os.environ, PYXEN_ROOT=str(self.root), TERM="dumb",
                        PATH="/usr/local/sbin:" + os.environ.get("PATH", "/usr/bin:/bin"))

    def rooted(self, command: str) -> str:
        return SHARED.sub(str(self.shared), ROOTED.sub(str(self.root), command))

    def bash(self, command: str, timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.run(prefix + ["bash", "-o", "pipefail", "-c", command],
                              env=self.env, cwd=self.root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def cleanup(self) -> None:
        if self.bash("xend status").returncode == 0:
            names = self.bash("xm list | tail -n +2 | awk '{print $1}'").stdout.split()
            for name in names:
                if name != "Domain-0":
                    self.bash(f"xm destroy {name}")
            self.bash("xend stop")
        for d in Path("/proc").iterdir():          # a QEMU this host's xend left behind
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            try:
                cwd = os.readlink(d / "cwd")      # xend starts QEMU in its run dir
            except OSError:
                cwd = ""
            if d.name.isdigit() and "qemu-system" in cmd and (f"{self.root}/" in cmd or cwd.startswith(f"{self.root}/")):
                os.kill(int(d.name), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def hosts(image, request):
    netns = None
    if request.node.callspec.params["page"] not in HOST_NETWORK_PAGES:
        netns = f"pxguide{os.getpid() % 100000}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    made: dict[str, GuideHost] = {}
    shared = Path(tempfile.mkdtemp(prefix="pxs", dir="/tmp"))
    (shared / "srv/xen").mkdir(parents=True)

    def get(name: str) -> GuideHost:
        if name not in made:
            made[name] = GuideHost(name, netns, shared)
        return made[name]
    try:
        yield get, made, shared
    finally:
        for h in made.values():
            h.cleanup()
        if netns:
            subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(shared, ignore_errors=True)


def _unroot(output: str, made: dict[str, GuideHost], shared: Path) -> str:
    for d in sorted([h.root for h in made.values()] + [shared], key=lambda d: -len(str(d))):
        output = output.replace(f"{d}/", "/")
    return output


@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", _pages())
def test_guide_page(page, hosts):
    get, made, shared = hosts
    setup, files = guide.page_examples(page)
    for path in ([setup] if setup else []) + files:
        rel = path.relative_to(guide.GUIDE)
        for step in transcript.parse(path.read_text(), str(rel)):
            host = get(step.host)
            res = host.bash(host.rooted(step.command))
            out = _unroot(res.stdout, made, shared)
            where = f"{rel}:{step.line}: {step.command.splitlines()[0]}"
            assert res.returncode == 0, f"{where}\nexited {res.returncode}; output:\n{out}"
            assert "Traceback" not in out, f"{where}\n{out}"
            assert transcript.matches(step.expected, out), (
                f"{where}\n--- the guide says:\n" + "\n".join(step.expected) +
                f"\n--- it printed:\n{transcript.normalise(out)}")
