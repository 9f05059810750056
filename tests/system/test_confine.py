"""Issues 9 and 15, least privilege (beyond Xen): QEMU confined by default.

With no option at all each domain's QEMU runs as uid/gid 1900000000+domid
(``qemu-uid-base``), with no capabilities (bounding set too), NoNewPrivs
and a full seccomp sandbox; xend opens the disks (root:0600 files, each
layer of a qcow2 chain), kernel and console log and hands QEMU
descriptors, and creates the taps owned by that uid.  A guest's QEMU that an attacker controls
(simulated through its own monitor) cannot open another domain's disk, and
its uid cannot read the other QEMU's /proc entries.  Everything else keeps
working: console, disks, hotplug of disks and vifs, xend restart with
re-adoption, save/restore and dump-core.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError, QMPClient

from pyxen.testing.wait import poll

BASE = 1900000000     # the default qemu-uid-base



def qemu_pid(host, name: str) -> int:
    for pid in host.qemu_pids():
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if args[args.index(b"-name") + 1].split(b",")[0].decode() == name:
            return pid
    raise AssertionError(f"no QEMU for {name}")


def status(pid: int) -> dict[str, str]:
    return {k: v.strip() for k, v in (ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines())}


def ids(pid: int) -> tuple[list[int], list[int]]:
    st = status(pid)
    return [int(x) for x in st["Uid"].split()], [int(x) for x in st["Gid"].split()]


def assert_confined(pid: int) -> None:
    """No capabilities at all (nor any to gain), no new privileges, seccomp."""
    st = status(pid)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
    assert st["Groups"] == "", st["Groups"]
    # Nothing of xend's but what it passed: no socket, no store, no log of xend's.
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        assert "xend" not in target and not target.endswith(".sock"), target


def disk(host, name: str, marker: bytes) -> Path:
    d = host.root / "disks"
    d.mkdir(mode=0o700, exist_ok=True)
    p = d / f"{name}.img"
    p.write_bytes(marker.ljust(4 << 20, b"\0"))
    p.chmod(0o600)
    return p


def read_disk(con, dev: str, n: int) -> str:
    out, rc = con.run(f"dd if=/dev/{dev} bs={n} count=1 2>/dev/null; echo")
    assert rc == 0, out
    return out.strip()


def as_uid(uid: int, code: str) -> dict:
    """Run *code* (which sets ``out``) as *uid*/*uid* in a child Python."""
    prog = (f"import os, json\nos.setgroups([]); os.setgid({uid}); os.setuid({uid})\nout = {{}}\n"
            f"{code}\nprint(json.dumps(out))")
    res = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def through_monitor(sock: Path, target: Path) -> list[str]:
    """What an attacker with A's QEMU gets when it asks for *target*: every
    answer (they must all be refusals)."""
    async def go():
        c = QMPClient("attacker")
        await c.connect(str(sock))
        out = []
        try:
            try:
                await c.execute("blockdev-add", {"driver": "file", "filename": str(target), "node-name": "evil"})
                out.append("blockdev-add: opened")
            except ExecuteError as e:
                out.append(f"blockdev-add: {e}")
            hmp = await c.execute("human-monitor-command",
                                  {"command-line": f"drive_add 0 if=none,id=evil2,file={target}"})
            out.append(f"drive_add: {hmp.strip()}")
        finally:
            await c.disconnect()
        return out
    return asyncio.run(go())


@pytest.fixture
def netns():
    """A network namespace with a bridge for this test's xend: its taps
    (vif<domid>.<devid>) never meet another test's of the same name."""
    ns = f"pxcf{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "add", "br0", "type", "bridge"], check=True)
        yield ns
    finally:
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], check=False)


def links(ns: str) -> dict[str, str]:
    """Interface name -> owner uid ('' for none) in *ns*."""
    out = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                          "for d in /sys/class/net/*; do echo ${d##*/} $(cat $d/owner 2>/dev/null); done"],
                         capture_output=True, text=True, check=True).stdout
    return {ln.split()[0]: (ln.split() + [""])[1] for ln in out.splitlines() if ln.strip()}


def test_unprivileged_qemu_isolated_per_domain(make_host, netns):
    bridge = "br0"
    host = make_host("(accel tcg)\n", start=False, netns=netns)     # confinement is the default
    host.xend("start")
    a_img, b_img, c_img = disk(host, "a", b"disk-A"), disk(host, "b", b"disk-B"), disk(host, "c", b"disk-C")
    host.xm("create", str(host.config("ua", disk=[f"file:{a_img},xvdb,w"], vif=[f"bridge={bridge}"])))
    # A qcow2 over a relative backing file: both layers come as descriptors.
    disk(host, "base", b"disk-Q")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw",
                    str(host.root / "disks/b.qcow2")], check=True)
    host.xm("create", str(host.config("ub", disk=[f"file:{b_img},xvdb,w",
                                                  f"tap:qcow2:{host.root}/disks/b.qcow2,xvdc,r"])))
    rows = host.domains()
    pid_a, pid_b = qemu_pid(host, "ua"), qemu_pid(host, "ub")
    uid_a, uid_b = BASE + rows["ua"]["id"], BASE + rows["ub"]["id"]
    assert ids(pid_a) == ([uid_a] * 4, [uid_a] * 4)
    assert ids(pid_b) == ([uid_b] * 4, [uid_b] * 4)
    for pid in (pid_a, pid_b):
        assert_confined(pid)
        # xend started it (no -daemonize), in its own session, and QEMU opens no host path.
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert "-daemonize" not in args and "-runas" not in args
        assert args[args.index("-sandbox") + 1] == \
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        assert str(host.root) not in " ".join(args) and "/var/lib/pyxen" not in " ".join(args)
        assert os.getsid(pid) == pid
    # The disks stay root-only; the tap belongs to A's uid.
    assert a_img.stat().st_uid == 0 and a_img.stat().st_mode & 0o777 == 0o600
    tap = f"vif{rows['ua']['id']}.0"
    assert links(netns)[tap] == str(uid_a)

    with host.console("ua") as con:
        con.login()
        assert read_disk(con, "xvdb", 6) == "disk-A"
        _, rc = con.run("printf wrote-A | dd of=/dev/xvdb bs=512 count=1 conv=sync,fsync 2>/dev/null")
        assert rc == 0
    assert a_img.read_bytes()[:7] == b"wrote-A"
    with host.console("ub") as con:
        con.login()
        assert read_disk(con, "xvdc", 6) == "disk-Q"

    # A's uid, directly: B's disk file and B's QEMU's descriptors are closed to it.
    got = as_uid(uid_a, f"""
for what, fn in (("disk", lambda: open({str(b_img)!r}, "rb")),
                 ("fds", lambda: os.listdir("/proc/{pid_b}/fd")),
                 ("fd0", lambda: os.readlink("/proc/{pid_b}/fd/0")),
                 ("mem", lambda: open("/proc/{pid_b}/mem", "rb"))):
    try:
        fn()
        out[what] = "ok"
    except OSError as e:
        out[what] = e.errno
""")
    import errno
    assert all(v in (errno.EACCES, errno.EPERM) for v in got.values()), got

    # The monitor refuses to have QEMU run a program or write a host file.
    evil = host.root / "evil-out"
    for line in (f'migrate "exec:id > {evil}"', f"dump-guest-memory {evil}", f"drive_add 0 if=none,id=e,file={b_img}"):
        res = host.xm("qemu-monitor", "ua", line, check=False)
        assert res.returncode == 1 and "refused" in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not evil.exists()
    assert host.domains()["ua"]["state"] != "-----c"

    # A compromised QEMU: xend lets go of A's monitor (xend stop leaves the
    # guests running) and the "attacker" asks A's QEMU to open B's disk.
    host.xend("stop")
    answers = through_monitor(host.root / f"var/run/pyxen/qemu/{rows['ua']['id']}/qmp.sock", b_img)
    assert len(answers) == 2 and all("Permission denied" in a for a in answers), answers

    # xend comes back and adopts both, unchanged.
    host.xend("start")
    rows2 = host.domains()
    assert {k: v["id"] for k, v in rows2.items()} == {k: v["id"] for k, v in rows.items()}
    assert all(set(v["state"]) <= set("rb-") for v in rows2.values()), rows2
    assert qemu_pid(host, "ua") == pid_a

    # Hotplug after the restart: the disk comes as a descriptor, the tap owned by A's uid.
    host.xm("block-attach", "ua", f"file:{c_img}", "xvdc", "w")
    disk(host, "hbase", b"disk-H")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "hbase.img", "-F", "raw",
                    str(host.root / "disks/h.qcow2")], check=True)
    host.xm("block-attach", "ua", f"tap:qcow2:{host.root}/disks/h.qcow2", "xvdd", "r")
    host.xm("network-attach", "ua", f"bridge={bridge}")
    assert links(netns)[f"vif{rows['ua']['id']}.1"] == str(uid_a)
    with host.console("ua") as con:
        con.login()
        poll(lambda: con.run("test -b /dev/xvdc")[1] == 0, 60, what="xvdc in the guest")
        assert read_disk(con, "xvdc", 6) == "disk-C"
        poll(lambda: con.run("test -b /dev/xvdd")[1] == 0, 60, what="xvdd in the guest")
        assert read_disk(con, "xvdd", 6) == "disk-H"
        poll(lambda: con.run("ip link show eth1")[1] == 0, 60, what="eth1 in the guest")
    host.xm("block-detach", "ua", "xvdc")
    host.xm("block-detach", "ua", "xvdd")
    host.xm("network-detach", "ua", "1")
    assert f"vif{rows['ua']['id']}.1" not in links(netns)

    # dump-core writes through a descriptor xend opened.
    core = host.root / "ub.core"
    host.xm("dump-core", "ub", str(core), timeout=600)
    assert core.stat().st_size > (64 << 20) and core.stat().st_uid == 0

    # Save and restore: a new domid, so a new uid; the disk still works.
    chk = host.root / "ua.chk"
    host.xm("save", "ua", str(chk), timeout=300)
    assert "ua" not in host.domains() and len(host.qemu_pids()) == 1
    host.xm("restore", str(chk), timeout=300)
    new_id = host.domains()["ua"]["id"]
    assert ids(qemu_pid(host, "ua"))[0] == [BASE + new_id] * 4
    assert_confined(qemu_pid(host, "ua"))
    with host.console("ua") as con:
        con.login()
        assert read_disk(con, "xvdb", 7) == "wrote-A"

    for name in ("ua", "ub"):
        host.xm("destroy", name)
    assert host.qemu_pids() == []
    assert not [n for n in links(netns) if n.startswith(f"vif{new_id}.")]


def test_qemu_user_must_exist(make_host):
    host = make_host("(accel tcg)\n(qemu-user no-such-pyxen-user)\n")
    res = host.xm("create", str(host.config("nouser")), check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "(qemu-user no-such-pyxen-user): no such user on this host" in res.stderr, res.stderr
    assert "nouser" not in host.domains() and host.qemu_pids() == []


def test_host_access_still_meets_the_sandbox(make_host):
    """(qemu-monitor-host-access yes) lets the command through xm; QEMU's
    own sandbox (spawn=deny) still refuses to run the program."""
    host = make_host("(accel tcg)\n(qemu-monitor-host-access yes)\n")
    host.xm("create", str(host.config("spawn")))
    out = host.root / "spawned"
    res = host.xm("qemu-monitor", "spawn", f'migrate "exec:id > {out}"', check=False)
    assert "Traceback" not in res.stderr
    # QEMU 7.2's sandbox kills the process that tries to fork the program:
    # the guest crashed (on_crash=destroy), nothing ran.
    assert res.returncode == 1, res.stdout
    poll(lambda: "spawn" not in host.domains(), 30, what="the crashed domain gone")
    assert not out.exists()
    host.xm("destroy", "spawn", check=False)
    assert host.qemu_pids() == []


def test_real_account_in_the_uid_range_stops_xend(make_host):
    import pwd
    nobody = pwd.getpwnam("nobody").pw_uid
    host = make_host(f"(accel tcg)\n(qemu-uid-base {nobody - 10})\n", start=False)
    res = host.run("xend", "start")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"uid {nobody} of its range" in res.stderr and "'nobody'" in res.stderr, res.stderr
    assert host.run("xend", "status").returncode != 0


def test_root_opt_out_warns(make_host):
    host = make_host("(accel tcg)\n(qemu-user root)\n", start=False)
    res = host.run("xend", "start")
    assert res.returncode == 0, res.stderr
    assert "(qemu-user root): QEMU runs as root" in res.stderr
    host.xm("create", str(host.config("asroot")))
    pid = qemu_pid(host, "asroot")
    st = status(pid)
    assert ids(pid)[0] == [0] * 4 and int(st["CapBnd"], 16) == 0 and st["NoNewPrivs"] == "1"
    host.xm("destroy", "asroot")
