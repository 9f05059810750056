"""xm snapshot-create / -list / -revert / -delete with real guests (issue 19).

The guests boot the default image (its root is an initramfs, so /tmp is
guest RAM); the disk guest has a qcow2 data disk, sdb, written raw with dd:
marker A at sector 0 before a snapshot, B at sector 1 after it.  A revert
must bring back A and drop B on the disk *and* in RAM (/tmp), and the guest
must run on from the snapshot instant: its /proc/uptime after the revert is
that of the snapshot, not a fresh boot's nor the time since.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from pyxen.testing.wait import poll
from tests.system.test_faults import start_faulty


def uptime(con) -> float:
    out, rc = con.run("cut -d' ' -f1 /proc/uptime")
    assert rc == 0, out
    return float(out.split()[-1])


class Instant:
    """A snapshot's instant in guest time, and the check that a revert ran
    the guest on from it: after the revert its uptime is at least the
    snapshot's and at most that plus the wall time the create and the
    revert-until-now took (a guest that was not reverted is ahead by the
    wait in between, 15 s)."""

    def take(self, host, con, *args: str) -> None:
        self.at = uptime(con)
        w0 = time.monotonic()
        host.xm("snapshot-create", *args)
        self.taking = time.monotonic() - w0

    def revert(self, host, *args: str) -> None:
        self.r0 = time.monotonic()
        host.xm("snapshot-revert", *args)

    def check(self, con) -> None:
        t = uptime(con)
        bound = self.at + self.taking + (time.monotonic() - self.r0) + 2
        assert self.at <= t <= bound, (self.at, t, bound)


def sector(con, n: int) -> str:
    out, rc = con.run(f"dd if=/dev/sdb bs=512 skip={n} count=1 2>/dev/null | tr -d '\\000'")
    assert rc == 0, out
    return out.strip()


def mark(con, n: int, text: str) -> None:
    _, rc = con.run(f"echo {text} | dd of=/dev/sdb bs=512 seek={n} count=1 conv=sync 2>/dev/null && sync "
                    f"&& echo {text} > /tmp/{text}")
    assert rc == 0


def tmp_files(con) -> set[str]:
    out, _ = con.run("ls /tmp")
    return set(out.split())


def snaps(host, dom: str) -> dict[str, dict]:
    """xm snapshot-list parsed by columns (the name carries '*' when current)."""
    lines = host.xm("snapshot-list", dom).stdout.splitlines()
    assert lines[0].split() == ["Name", "Time", "Type", "Size(MB)", "Parent"], lines[0]
    out = {}
    for line in lines[1:]:
        name, day, clock, kind, size, parent = line.split()
        out[name.rstrip("*")] = {"current": name.endswith("*"), "kind": kind, "size": size,
                                 "parent": None if parent == "-" else parent}
    return out


def disk_tags(path) -> list[str]:
    info = subprocess.run(["qemu-img", "info", "--force-share", "--output=json", str(path)],
                          capture_output=True, text=True, check=True).stdout
    return [s["name"] for s in json.loads(info).get("snapshots", [])]


def assert_one_line_error(res, *needles):
    assert res.returncode != 0, res.stdout
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and err.startswith("Error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture
def q2(tmp_path):
    path = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def test_qcow2_guest_snapshot_tree_revert_delete(host, q2, tmp_path):
    host.xm("create", str(host.config("snap", disk=[f"tap:qcow2:{q2},sdb,w"])))
    with host.console("snap") as con:
        con.login()
        mark(con, 0, "AAAA")
        s1 = Instant()
        s1.take(host, con, "snap", "s1")
        mark(con, 1, "BBBB")
        poll(lambda: uptime(con) > s1.at + s1.taking + 15, 60, what="guest time to move on")
    assert snaps(host, "snap")["s1"] == {"current": True, "kind": "memory", "size": snaps(host, "snap")["s1"]["size"],
                                         "parent": None}
    s1.revert(host, "snap", "s1")
    with host.console("snap") as con:
        con.login()
        # From the snapshot instant on: not rebooted, and the 15 s after it are gone.
        s1.check(con)
        assert sector(con, 0) == "AAAA" and sector(con, 1) == ""
        assert "AAAA" in tmp_files(con) and "BBBB" not in tmp_files(con)
        # A tree of three: s1 -> s2, back to s1, then s3 is s1's child too.
        mark(con, 1, "CCCC")
        host.xm("snapshot-create", "snap", "s2")
    host.xm("snapshot-revert", "snap", "s1")
    host.xm("snapshot-create", "snap", "s3", "--live")
    tree = snaps(host, "snap")
    assert [tree[n]["parent"] for n in ("s1", "s2", "s3")] == [None, "s1", "s1"], tree
    assert tree["s3"]["current"] and not tree["s2"]["current"]
    # Refusals: one line each, nothing changed.
    assert_one_line_error(host.xm("snapshot-create", "snap", "s2", check=False), "already has a snapshot named 's2'")
    assert_one_line_error(host.xm("snapshot-revert", "snap", "nope", check=False), "no snapshot named 'nope'")
    assert_one_line_error(host.xm("snapshot-create", "snap", "bad/name", check=False), "Invalid snapshot name")
    # Delete in the middle: s2 and s3 keep their disk and memory state.
    host.xm("snapshot-delete", "snap", "s1")
    tree = snaps(host, "snap")
    assert set(tree) == {"s2", "s3"} and tree["s2"]["parent"] is None and tree["s3"]["parent"] is None
    assert len(disk_tags(q2)) == 2
    host.xm("snapshot-revert", "snap", "s2")
    with host.console("snap") as con:
        con.login()
        assert sector(con, 0) == "AAAA" and sector(con, 1) == "CCCC" and "CCCC" in tmp_files(con)
    # The tree survives an xend restart and a save/restore of the domain.
    host.xend("restart")
    assert set(snaps(host, "snap")) == {"s2", "s3"}
    saved = tmp_path / "snap.save"
    host.xm("save", "snap", str(saved))
    host.xm("restore", str(saved))
    assert set(snaps(host, "snap")) == {"s2", "s3"} and snaps(host, "snap")["s2"]["current"]
    host.xm("snapshot-revert", "snap", "s3")
    with host.console("snap") as con:
        con.login()
        assert sector(con, 0) == "AAAA" and sector(con, 1) == ""
        assert "AAAA" in tmp_files(con) and "CCCC" not in tmp_files(con)
        # Disk only: the disk as it was; a revert boots the guest afresh on it.
        mark(con, 2, "DDDD")
        host.xm("snapshot-create", "snap", "d1", "--disk-only")
        mark(con, 3, "EEEE")
    assert snaps(host, "snap")["d1"]["kind"] == "disk"
    host.xm("snapshot-revert", "snap", "d1")
    with host.console("snap") as con:
        con.login()
        assert uptime(con) < 120
        assert sector(con, 2) == "DDDD" and sector(con, 3) == ""
        assert "DDDD" not in tmp_files(con)          # RAM was not part of it: a fresh boot
    for n in ("s2", "s3", "d1"):
        host.xm("snapshot-delete", "snap", n)
    assert snaps(host, "snap") == {} and disk_tags(q2) == []


def test_raw_disk_gets_an_overlay_and_its_base_stays_read_only(host, tmp_path):
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * (16 << 20))
    host.xm("create", str(host.config("rawdisk", disk=[f"file:{raw},sdb,w"])))
    with host.console("rawdisk") as con:
        con.login()
        mark(con, 0, "AAAA")
        r1 = Instant()
        r1.take(host, con, "rawdisk", "r1")
        mark(con, 1, "BBBB")
        poll(lambda: uptime(con) > r1.at + r1.taking + 15, 60, what="guest time to move on")
    # The guest writes to the overlay now: the raw file is its untouched base.
    data = raw.read_bytes()
    assert data.startswith(b"AAAA") and b"BBBB" not in data
    long = host.xm("list", "-l", "rawdisk").stdout
    assert re.search(r"tap:qcow2:/\S+/sdb-\w+\.qcow2", long) and str(raw) not in long, long
    # Nobody may write the base now (read-only sharing is still fine).
    res = host.xm("create", "-p", str(host.config("thief", disk=[f"file:{raw},sda1,w"])), check=False)
    assert_one_line_error(res, "already exported read-only to domain rawdisk")
    r1.revert(host, "rawdisk", "r1")
    with host.console("rawdisk") as con:
        con.login()
        r1.check(con)
        assert sector(con, 0) == "AAAA" and sector(con, 1) == ""
        assert "AAAA" in tmp_files(con) and "BBBB" not in tmp_files(con)
    assert b"BBBB" not in raw.read_bytes()


def test_block_detach_of_an_overlaid_raw_disk_refused_then_merged(host, tmp_path):
    """A raw disk writing to its snapshot overlay: block-detach is refused
    while a snapshot keeps disk state in the overlay; once none does, the
    detach merges the overlay back, so the raw image holds every write and
    another domain can use it read-write."""
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * (16 << 20))
    host.xm("create", str(host.config("detach", disk=[f"file:{raw},sdb,w"])))
    with host.console("detach") as con:
        con.login()
        mark(con, 0, "AAAA")
        host.xm("snapshot-create", "detach", "o1", "--disk-only")
        mark(con, 1, "BBBB")
        overlay = re.search(r"tap:qcow2:(/\S+/sdb-\w+\.qcow2)", host.xm("list", "-l", "detach").stdout).group(1)
        res = host.xm("block-detach", "detach", "sdb", check=False)
        assert_one_line_error(res, "snapshot overlay", "o1", "xm snapshot-delete detach")
        assert sector(con, 1) == "BBBB"                  # still attached, still the guest's
        host.xm("snapshot-delete", "detach", "o1")
        host.xm("block-detach", "detach", "sdb")
        poll(lambda: con.run("test -b /dev/sdb")[1] != 0, 60, what="sdb to leave the guest")
    data = raw.read_bytes()
    assert data[:4] == b"AAAA" and data[512:516] == b"BBBB"
    assert not os.path.exists(overlay)
    assert "sdb" not in host.xm("block-list", "-l", "detach").stdout
    # Not a base any more: another domain may write it.
    host.xm("create", "-p", str(host.config("reuser", disk=[f"file:{raw},sda1,w"])))
    host.xm("destroy", "reuser")


def test_diskless_guest_live_snapshot_and_refused_disks(host, tmp_path):
    host.xm("create", str(host.config("mem")))
    with host.console("mem") as con:
        con.login()
        _, rc = con.run("echo a > /tmp/a")
        assert rc == 0
        host.xm("snapshot-create", "mem", "m1", "--live")
        _, rc = con.run("echo b > /tmp/b")
    assert_one_line_error(host.xm("snapshot-create", "mem", "d", "--disk-only", check=False),
                          "has no writable disk")
    # A paused guest stays paused through its snapshot, and a revert to it is paused too.
    host.xm("pause", "mem")
    host.xm("snapshot-create", "mem", "p1")
    assert host.domains()["mem"]["state"] == "--p---"
    host.xm("unpause", "mem")
    host.xm("snapshot-revert", "mem", "p1")
    assert host.domains()["mem"]["state"] == "--p---"
    host.xm("unpause", "mem")
    host.xm("snapshot-revert", "mem", "m1")
    with host.console("mem") as con:
        con.login()
        files = tmp_files(con)
        assert "a" in files and "b" not in files, files
    vmdk = tmp_path / "d.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "8M"], check=True)
    host.xm("create", "-p", str(host.config("vm", disk=[f"tap:vmdk:{vmdk},sdb,w"])))
    assert_one_line_error(host.xm("snapshot-create", "vm", "v1", check=False),
                          "is a vmdk image: snapshots need qcow2 or raw disks")
    assert snaps(host, "vm") == {}
    host.xm("create", "-p", str(host.config("tpm", vtpm=["instance=7,backend=0"])))
    assert_one_line_error(host.xm("snapshot-create", "tpm", "t1", check=False),
                          "has a vTPM, whose state is not part of a snapshot")
    assert_one_line_error(host.xm("snapshot-create", "Domain-0", "x", check=False),
                          "Domain 0 cannot be snapshotted")


def test_xend_killed_during_snapshot_create_leaves_no_half_snapshot(host, q2):
    host.xm("create", str(host.config("kill", disk=[f"tap:qcow2:{q2},sdb,w"])))
    with host.console("kill") as con:
        con.login()
    start_faulty(host, "snapshot-after-disks")
    res = host.xm("snapshot-create", "kill", "k1", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert host.xend("status", check=False).returncode == 3           # xend died at the fault
    assert len(disk_tags(q2)) == 1                                     # the disks were taken...
    host.xend("start")
    assert snaps(host, "kill") == {} and disk_tags(q2) == []           # ...and rolled back
    assert host.domains()["kill"]["state"].strip("-") == "r" or "b" in host.domains()["kill"]["state"]
    assert "p" not in host.domains()["kill"]["state"]                  # running again, not left paused
    host.xm("snapshot-create", "kill", "k1")                          # the name is free
    assert list(snaps(host, "kill")) == ["k1"] and len(disk_tags(q2)) == 1


def test_xend_killed_during_revert_finishes_it(host):
    host.xm("create", str(host.config("rev")))
    with host.console("rev") as con:
        con.login()
        _, rc = con.run("echo a > /tmp/a")
        host.xm("snapshot-create", "rev", "r1")
        _, rc = con.run("echo b > /tmp/b")
    start_faulty(host, "revert-after-stop")
    res = host.xm("snapshot-revert", "rev", "r1", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert host.xend("status", check=False).returncode == 3
    assert host.qemu_pids() == []                                     # the old QEMU was stopped
    host.xend("start")
    poll(lambda: len(host.qemu_pids()) == 1, 60, what="the revert to be done again")
    assert host.domains()["rev"]["state"] in ("r-----", "-b----")
    with host.console("rev") as con:
        con.login()
        files = tmp_files(con)
        assert "a" in files and "b" not in files, files
    assert snaps(host, "rev")["r1"]["current"]


def test_unprivileged_qemu_snapshots_raw_and_qcow2(make_host, q2, tmp_path):
    """With (qemu-uid-base N) QEMU cannot open any path once the guest
    runs: the raw disk's overlay reaches it as a descriptor, the memory
    state too, and the revert's new QEMU opens its images while still root."""
    # A base of its own, away from test_confine.py's (uids are host-wide).
    host = make_host(f"(accel tcg)\n(qemu-uid-base {400000 + (os.getpid() % 500) * 100})\n")
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * (8 << 20))
    host.xm("create", str(host.config("conf", disk=[f"tap:qcow2:{q2},sdb,w", f"file:{raw},sdc,w"])))
    with host.console("conf") as con:
        con.login()
        _, rc = con.run("echo AAAA | dd of=/dev/sdc bs=512 count=1 conv=sync 2>/dev/null && sync")
        assert rc == 0
        mark(con, 0, "AAAA")
        host.xm("snapshot-create", "conf", "c1")
        mark(con, 1, "BBBB")
        _, rc = con.run("echo BBBB | dd of=/dev/sdc bs=512 seek=1 count=1 conv=sync 2>/dev/null && sync")
        assert rc == 0
    host.xm("snapshot-revert", "conf", "c1")
    with host.console("conf") as con:
        con.login()
        assert sector(con, 0) == "AAAA" and sector(con, 1) == ""
        out, rc = con.run("dd if=/dev/sdc bs=512 count=2 2>/dev/null | tr -d '\\000'")
        assert rc == 0 and "AAAA" in out and "BBBB" not in out, out
        assert "BBBB" not in tmp_files(con)
    assert b"BBBB" not in raw.read_bytes()
