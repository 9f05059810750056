"""Issue 15 item 4: with the state disk full, every operation either
persists its new state before it reports success or is undone — one line
naming "no space left on <the state dir>", a non-zero exit, QEMU exactly as
before (run state, balloon, vCPUs online, block and network devices) — and
after the space comes back and xend restarts, ``xm list`` matches QEMU.
Destroy on a full disk still destroys.

One guest serves every operation (a TCG boot per operation would cost
minutes on this shared machine): a small tmpfs is mounted as the state
directory before xend starts, and each test fills it, tries one operation,
and frees it again.  The operations that end the domain come last.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import Host

from pyxen.hypervisor import cgroups
from pyxen.paths import Paths
from pyxen.testing import state
from pyxen.testing.wait import poll

DOM = "fd"


def fill(d: Path) -> None:
    """Until the disk says ENOSPC (unbuffered: no write is left for close)."""
    fd = os.open(d / ".filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\xa5" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def free(d: Path) -> None:
    (d / ".filler").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def fd_host(image):
    root = Path(tempfile.mkdtemp(prefix="px", dir="/tmp"))
    # Plaintext relocation: the migrate case needs no CA (it stops at the record anyway).
    h = Host(root, image, textwrap.dedent("(accel tcg)\n(xend-relocation-tls no)\n"))
    h.state_dir = Paths(root).state
    h.state_dir.mkdir(parents=True)
    bridge = f"pxfd{os.getpid() % 10000}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(h.state_dir)], check=True)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        h.bridge = bridge
        h.xend("start")
        data = root / "data.img"
        data.write_bytes(b"\0" * (4 << 20))
        (root / "more.img").write_bytes(b"\0" * (4 << 20))
        h.xm("create", str(h.config(DOM, vcpus=2, memory=128, disk=[f"file:{data},xvdb,w"],
                                    # Its own tap name: vif<domid>.0 may be another test's right now.
                                    vif=[f"bridge={bridge},vifname={bridge}v"])))
        with h.console(DOM) as con:
            con.login()
        h.uuid = [ln for ln in h.xm("list", "-l", DOM).stdout.splitlines() if "(uuid " in ln][0].split()[1][:-1]
        yield h
    finally:
        free(h.state_dir)
        h.cleanup()
        subprocess.run(["umount", str(h.state_dir)], check=False)
        subprocess.run(["ip", "link", "del", bridge], check=False)


@pytest.fixture
def full(fd_host):
    fill(fd_host.state_dir)
    try:
        yield fd_host
    finally:
        free(fd_host.state_dir)


def monitor(h, cmd: str) -> str:
    return h.xm("qemu-monitor", DOM, cmd).stdout


def names(text: str) -> list[str]:
    """The device names of an ``info block``/``info network`` listing."""
    return sorted(m.group(1) for m in re.finditer(r"^[ \\]*([\w-]+):", text, re.M))


def online(h) -> str:
    with h.console(DOM) as con:
        return con.run("cat /sys/devices/system/cpu/online")[0].strip()


def qemu_view(h) -> dict:
    """What QEMU (and the guest) say the domain is, beside what xm says."""
    status = monitor(h, "info status").strip()
    return {"status": status,
            "balloon": monitor(h, "info balloon").strip(),
            "block": names(monitor(h, "info block")),
            "network": names(monitor(h, "info network")),
            "cgroup": cgroups.read(h.uuid),
            "online": None if "paused" in status else online(h)}     # a paused guest cannot answer


def xm_view(h) -> dict:
    longs = h.xm("list", "-l", DOM).stdout
    row = {k: v for k, v in h.domains()[DOM].items() if k != "time"}     # CPU time moves on
    return {"row": row,
            "maxmem": re.findall(r"\(maxmem \d+\)", longs),
            "credit": h.xm("sched-credit", "-d", DOM).stdout,
            "sedf": h.xm("sched-sedf", DOM).stdout,
            "block-list": h.xm("block-list", DOM).stdout,
            "network-list": h.xm("network-list", DOM).stdout}


# (name, xm arguments, set up before the disk fills, put back afterwards)
OPS = [
    ("pause", ["pause", DOM], None, None),
    ("unpause", ["unpause", DOM], ["pause", DOM], ["unpause", DOM]),
    ("mem-set", ["mem-set", DOM, "96"], None, None),
    ("mem-max", ["mem-max", DOM, "128"], None, None),
    ("vcpu-set", ["vcpu-set", DOM, "1"], None, None),
    ("sched-credit", ["sched-credit", "-d", DOM, "-w", "512", "-c", "50"], None, None),
    ("sched-sedf", ["sched-sedf", DOM, "-p", "50.0", "-s", "25.0", "-e", "0"], None, None),
    ("rename", ["rename", DOM, "fd2"], None, None),
    ("block-attach", ["block-attach", DOM, "file:{root}/more.img", "xvdc", "w"], None, None),
    ("block-detach", ["block-detach", DOM, "xvdb"], None, None),
    ("network-attach", ["network-attach", DOM, "bridge={bridge}"], None, None),
    ("network-detach", ["network-detach", DOM, "0"], None, None),
    ("shutdown", ["shutdown", DOM], None, None),
    ("reboot", ["reboot", DOM], None, None),
    ("migrate", ["migrate", DOM, "127.0.0.1", "-p", "9"], None, None),
    ("snapshot-create", ["snapshot-create", DOM, "s1"], None, None),
    ("save", ["save", DOM, "{root}/fd.save"], None, None),
]


@pytest.mark.parametrize("op,args,setup,after", OPS, ids=[o[0] for o in OPS])
def test_operation_on_full_disk_is_refused_or_undone(fd_host, op, args, setup, after):
    h = fd_host
    if setup:
        h.xm(*setup)
    try:
        check_refused(h, op, args)
    finally:
        if after:
            h.xm(*after)


def check_refused(h, op, args) -> None:
    before_q, before_x = qemu_view(h), xm_view(h)
    if op == "reboot":
        with h.console(DOM) as con:
            up = float(con.run("cut -d' ' -f1 /proc/uptime")[0])
    fill(h.state_dir)
    try:
        argv = [a.format(root=h.root, bridge=h.bridge) for a in args]
        res = h.xm(*argv, check=False, timeout=120)
    finally:
        free(h.state_dir)
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no space left on {h.state_dir}" in lines[0], res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    # QEMU and the guest as they were (the balloon given time to come back).
    poll(lambda: qemu_view(h) == before_q, 60, what=f"QEMU as before {op}")
    assert xm_view(h) == before_x
    if op == "reboot":
        with h.console(DOM) as con:
            assert float(con.run("cut -d' ' -f1 /proc/uptime")[0]) > up      # not rebooted
    assert not (h.root / "fd.save").exists()


def test_create_on_full_disk_leaves_nothing(full):
    h = full
    pids = h.qemu_pids()
    res = h.xm("create", str(h.config("late")), check=False)
    assert res.returncode != 0 and f"no space left on {h.state_dir}" in res.stderr
    assert "late" not in h.domains() and h.qemu_pids() == pids


def test_after_restart_the_record_matches_qemu(fd_host):
    """With space again, xend restarts and lists what QEMU runs: the
    undone operations left no trace in the record."""
    h = fd_host
    h.xend("restart")
    row = h.domains()[DOM]
    actual = int(re.search(r"actual=(\d+)", monitor(h, "info balloon")).group(1))
    assert row["mem"] == actual == 128
    assert row["vcpus"] == 2 and online(h) == "0-1"
    assert "running" in monitor(h, "info status") and "p" not in row["state"]
    # Changes work again now that the disk has room.
    h.xm("mem-set", DOM, "112")
    poll(lambda: "actual=112" in monitor(h, "info balloon"), 60, what="the balloon at 112 MiB")
    h.xend("restart")
    assert h.domains()[DOM]["mem"] == 112


def test_destroy_on_full_disk_still_destroys(full):
    h = full
    assert h.qemu_pids()
    res = h.xm("destroy", DOM, check=False)
    assert res.returncode == 0, res.stderr
    assert DOM not in h.domains() and h.qemu_pids() == []
    assert state.domain_records(h.root) == []
    free(h.state_dir)
    h.xend("restart")
    assert DOM not in h.domains() and h.qemu_pids() == []
