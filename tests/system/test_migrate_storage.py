"""Issue 19, live migration with local disks (``xm migrate --copy-storage``):
two xends in two network namespaces (test_migrate.py's fixtures), and two
*disk directories*: the guest's disk lives at one path, DISKS, which on
host A is directory a/ and on host B — whose xend runs in a private mount
namespace with b/ bind-mounted over DISKS — is directory b/.  So the two
hosts see different files at the same path, as two machines with local
disks would; a directory not covered (SHARED) is storage both see.

A guest writes numbered records to its disk before and during the
migration; afterwards the target's guest reads every one back, and the
image on B (hashed after the domain is gone) is exactly the image A had
plus those records.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from test_migrate import A_IP, B_IP, MIGRATED, create, last, migrate, pair, state_files, xend_pid  # noqa: F401
from test_network import lab  # noqa: F401
from pyxen.testing.wait import poll

DISK_MIB = 32
SECTOR = 512


def start_private(host, mounts: list[list[str]]) -> None:
    """Start *host*'s xend in its own mount namespace after *mounts*
    (argv lists): its QEMUs see those mounts, the test's shell does not."""
    script = " && ".join([*(" ".join(m) for m in mounts), f"exec ip netns exec {host.netns} xend start"])
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         env=host.env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def pattern() -> bytes:
    """The disk's starting content: no two MiB alike, nothing compressible."""
    out = bytearray()
    for i in range(DISK_MIB):
        seed = hashlib.sha256(b"pyxen-%d" % i).digest()
        out += (seed * ((1 << 20) // len(seed)))
    return bytes(out)


def record(i: int) -> bytes:
    return b"rec %08d\n" % i


def with_records(base: bytes, n: int) -> bytes:
    """*base* after the guest wrote records 0..n-1 (one per sector, the rest of the sector kept)."""
    img = bytearray(base)
    for i in range(n):
        r = record(i)
        img[i * SECTOR:i * SECTOR + len(r)] = r
    return bytes(img)


@pytest.fixture
def disks(tmp_path):
    """DISKS (A's own view), B's directory and the shared one."""
    d = {"disks": tmp_path / "disks", "b": tmp_path / "b", "shared": tmp_path / "shared"}
    for p in d.values():
        p.mkdir()
    return d


@pytest.fixture
def hosts(pair, disks):
    """A and B; B's xend sees b/ at DISKS (or, with *tmpfs*, a small tmpfs)."""
    def make(tmpfs_mib: int | None = None):
        a, b = pair(start_b=False)
        src = ["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mib}m", "tmpfs", str(disks["disks"])] \
            if tmpfs_mib else ["mount", "--bind", str(disks["b"]), str(disks["disks"])]
        b.mounts = [src]
        start_private(b, b.mounts)
        return a, b
    return make


def make_disk(path: Path, fmt: str = "raw", backing: Path | None = None) -> Path:
    if fmt == "raw":
        path.write_bytes(pattern())
    else:
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if backing:
            argv += ["-b", str(backing), "-F", "raw"]
        subprocess.run(argv + [str(path), f"{DISK_MIB}M"], check=True)
    return path


def start_writer(con) -> None:
    """Records 0, 1, 2 ... one per sector of xvdb, each synced, until /tmp/stop exists."""
    con.run("rm -f /tmp/stop /tmp/last")
    con.send("(i=0; while [ ! -e /tmp/stop ]; do printf 'rec %08d\\n' $i | "
             "dd of=/dev/xvdb bs=512 seek=$i conv=notrunc,fsync 2>/dev/null; "
             "echo $i > /tmp/last; i=$((i+1)); done) &\r")
    poll(lambda: last(con.run("cat /tmp/last 2>/dev/null || echo -1")).strip().lstrip("-").isdigit()
         and int(last(con.run("cat /tmp/last 2>/dev/null || echo -1"))) >= 5, 60, what="the writer to start")


def stop_writer(con) -> int:
    """Stop the writer; the number of records it wrote."""
    con.run("touch /tmp/stop; wait")
    return int(last(con.run("cat /tmp/last"))) + 1


def guest_md5(con, n: int) -> str:
    con.run("sync; echo 3 > /proc/sys/vm/drop_caches")
    return last(con.run(f"dd if=/dev/xvdb bs=512 count={n} 2>/dev/null | md5sum")).split()[0]


def copy_migrate(a, dom, *opts, check=True):
    return migrate(a, dom, B_IP, "--live", "--copy-storage", *opts, check=check)


# ---------------------------------------------------------------------------
def test_local_disk_moves_with_every_write(hosts, disks, lab):
    a, b = hosts()
    img = make_disk(disks["disks"] / "data.img")
    shared = make_disk(disks["shared"] / "common.img")
    ino = shared.stat().st_ino
    create(a, "mover", disk=[f"file:{img},xvdb,w", f"file:{shared},xvdc,w"])
    with a.console("mover") as con:
        con.login()
        start_writer(con)
        res = copy_migrate(a, "mover")
    m = MIGRATED.search(res.stderr)
    assert m, res.stderr
    assert "xvdb copied" in res.stderr and "xvdc shared, not copied" in res.stderr, res.stderr
    assert "Copying disks of mover" in res.stderr           # disk progress was shown, apart from memory
    assert "mover" not in a.domains() and a.qemu_pids() == []
    assert (disks["b"] / "data.img").exists() and shared.stat().st_ino == ino
    assert not list(disks["shared"].glob(".pyxen-migrate-probe-*"))
    assert not list(disks["disks"].glob(".pyxen-migrate-probe-*"))
    with b.console("mover") as con:
        con.send("\r")
        n = stop_writer(con)
        want = with_records(pattern(), n)
        # The guest on B reads every record (caches dropped: from the disk).
        assert guest_md5(con, n) == hashlib.md5(want[:n * SECTOR]).hexdigest()
        # The shared disk is the same file, still writable from B.
        con.run("echo from-b | dd of=/dev/xvdc bs=512 seek=100 conv=notrunc,fsync 2>/dev/null")
    print(f"{n} records written, migration {m.group(1)} s\n{res.stderr}")
    assert n > 5
    b.xm("destroy", "mover")
    poll(lambda: b.qemu_pids() == [], 30, what="B's QEMU to exit")
    got = (disks["b"] / "data.img").read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()
    assert shared.read_bytes()[100 * SECTOR:100 * SECTOR + 7] == b"from-b\n"
    # A's own image is untouched by the copy: A's records only (fewer or equal).
    assert img.read_bytes()[:SECTOR * 2] == want[:SECTOR * 2]


def test_qcow2_backing_chain_kept_or_flattened(hosts, disks):
    a, b = hosts()
    base = make_disk(disks["shared"] / "base.raw")          # on both hosts: the chain is kept
    top = make_disk(disks["disks"] / "top.qcow2", "qcow2", backing=base)
    lonely = make_disk(disks["disks"] / "lonely.raw")        # only on A: its overlay is flattened
    flat = make_disk(disks["disks"] / "flat.qcow2", "qcow2", backing=lonely)
    create(a, "layers", disk=[f"tap:qcow2:{top},xvdb,w", f"tap:qcow2:{flat},xvdd,w"])
    with a.console("layers") as con:
        con.login()
        con.run("echo top-data | dd of=/dev/xvdb bs=512 seek=7 conv=notrunc,fsync 2>/dev/null")
    res = copy_migrate(a, "layers")
    assert "xvdb copied, backing chain kept" in res.stderr, res.stderr
    assert "xvdd copied, flattened" in res.stderr, res.stderr
    b.xm("destroy", "layers")
    poll(lambda: b.qemu_pids() == [], 30, what="B's QEMU to exit")
    info = subprocess.run(["qemu-img", "info", "--output=json", str(disks["b"] / "top.qcow2")],
                          capture_output=True, text=True, check=True).stdout
    assert str(base) in info
    info = subprocess.run(["qemu-img", "info", "--output=json", str(disks["b"] / "flat.qcow2")],
                          capture_output=True, text=True, check=True).stdout
    assert "backing-filename" not in info
    # Guest-visible content identical on both hosts' images.
    for name in ("top.qcow2", "flat.qcow2"):
        cmp = subprocess.run(["qemu-img", "compare", "-q", str(disks["disks"] / name), str(disks["b"] / name)])
        assert cmp.returncode == 0, name


def test_target_without_space_refuses_before_any_byte_moves(hosts, disks):
    a, b = hosts(tmpfs_mib=16)
    img = make_disk(disks["disks"] / "data.img")
    create(a, "big", disk=[f"file:{img},xvdb,w"])
    res = copy_migrate(a, "big", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "not enough space" in res.stderr and "32 MiB" in res.stderr, res.stderr
    assert "big is still running here" in res.stderr
    assert a.domains()["big"]["state"] in ("r-----", "-b----")
    assert "big" not in b.domains() and b.qemu_pids() == [] and state_files(b) == []
    assert "Copying disks" not in res.stderr               # no byte moved
    assert img.read_bytes() == pattern()


@pytest.mark.parametrize("side", ["target", "source"])
def test_xend_killed_mid_mirror_leaves_the_guest_on_the_source(hosts, disks, side):
    a, b = hosts()
    img = make_disk(disks["disks"] / "data.img")
    create(a, "victim", disk=[f"file:{img},xvdb,w"])
    with a.console("victim") as con:
        con.login()
    # -r 2: the mirror (and memory) at 2 MiB/s, so the disk copy takes ~16 s.
    p = subprocess.Popen(["xm", "migrate", "--progress", "--live", "--copy-storage", "-r", "2", "victim", B_IP],
                         env=a.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    created = disks["b"] / "data.img"
    poll(lambda: created.exists() and "victim" in b.domains(), 120, what="the target to create the disk")
    # The guest's data has reached the target's disk, but not all of it
    # (its blocks are no measure: the mirror zeroes the target first).
    want = pattern()

    def copied(off: int, n: int) -> bool:
        with open(created, "rb") as f:
            f.seek(off)
            return f.read(n) == want[off:off + n]
    tail = (DISK_MIB - 1) << 20
    poll(lambda: copied(0, 1 << 16) and not copied(tail, 1 << 20), 60, what="the mirror to be under way")
    os.kill(xend_pid(b if side == "target" else a), signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode != 0 and "Traceback" not in err
    if side == "target":
        assert "victim is still running here" in err, err
        start_private(b, b.mounts)                          # its next xend cleans up
    else:
        # The target saw the link end and dropped what it made; the
        # source's next xend rolls the migration back.
        poll(lambda: not created.exists(), 60, what="the target to remove the disk")
        a.xend("start")
    poll(lambda: not created.exists() and b.qemu_pids() == [], 60, what="the target to clean up",
         detail=lambda: f"disk left: {created.exists()}, B's QEMUs: {b.qemu_pids()}, B's log:\n{b.log_tail()}")
    assert "victim" not in b.domains() and state_files(b) == []
    assert not list((b.root / "var/lib/pyxen/incoming-disks").glob("*.json"))
    assert a.domains()["victim"]["state"] in ("r-----", "-b----")
    with a.console("victim") as con:
        con.send("\r")
        con.run("echo after | dd of=/dev/xvdb bs=512 seek=3 conv=notrunc,fsync 2>/dev/null")
        assert last(con.run("echo alive")) == "alive"
    assert img.read_bytes()[3 * SECTOR:3 * SECTOR + 6] == b"after\n"
    # Nothing of the attempt is left in A's QEMU: the next try works.
    res = copy_migrate(a, "victim")
    assert MIGRATED.search(res.stderr) and "xvdb copied" in res.stderr, res.stderr


def test_shared_disk_flag_and_snapshots(hosts, disks):
    """--shared-disk (issue 19's per-disk flag): a disk the detection sees
    as another host's file (B has its own identical copy at the path, as a
    SAN or a pre-seeded image would give) is refused without the flag and
    used in place with it; a wrong name, or a named disk B does not have, is
    refused in one line, the guest stays.  Snapshots kept inside a disk that
    would be copied refuse --copy-storage (internal qcow2 snapshots never
    travel with a mirror); otherwise the migration warns in one line that
    the snapshots stay with the source."""
    a, b = hosts()
    local = make_disk(disks["disks"] / "data.img")
    seeded = make_disk(disks["disks"] / "seeded.img")
    (disks["b"] / "seeded.img").write_bytes(seeded.read_bytes())
    create(a, "flag", disk=[f"file:{local},xvdb,w", f"file:{seeded},xvdc,w"])
    with a.console("flag") as con:
        con.login()
    res = copy_migrate(a, "flag", check=False)
    assert res.returncode != 0 and "already exists on this host" in res.stderr, res.stderr
    res = copy_migrate(a, "flag", "--shared-disk", "xvdz", check=False)
    assert res.returncode != 0 and "--shared-disk xvdz: not a local disk of flag" in res.stderr, res.stderr
    # xvdb is not on B at all: the target's check refuses before any byte moves.
    res = copy_migrate(a, "flag", "--shared-disk", "xvdb,xvdc", check=False)
    assert res.returncode != 0 and "given as shared (--shared-disk) but" in res.stderr, res.stderr
    assert "flag is still running here" in res.stderr and "Traceback" not in res.stderr
    assert not (disks["b"] / "data.img").exists() and b.qemu_pids() == []
    res = copy_migrate(a, "flag", "--shared-disk", "xvdc")
    assert "xvdb copied" in res.stderr and "xvdc shared, not copied" in res.stderr, res.stderr
    assert "flag" in b.domains() and (disks["b"] / "data.img").exists() and "Warning" not in res.stderr
    assert not list(disks["disks"].glob(".pyxen-migrate-probe-*"))
    b.xm("destroy", "flag")
    # Snapshots (qcow2 tags, a vhd cannot have them) inside a shared disk
    # the detection would call shared but the user did not name: refused.
    q2 = make_disk(disks["shared"] / "snap.qcow2", "qcow2")
    create(a, "snappy", disk=[f"tap:qcow2:{q2},xvdd,w"])
    with a.console("snappy") as con:
        con.login()
    a.xm("snapshot-create", "snappy", "s1", "--disk-only")
    res = copy_migrate(a, "snappy", check=False)
    assert res.returncode != 0 and "has snapshots (s1) kept inside disk(s) xvdd" in res.stderr, res.stderr
    assert "\n" not in res.stderr.strip() and "Traceback" not in res.stderr
    assert "snappy" in a.domains() and b.qemu_pids() == []
    # Named shared: it moves, and says in one line that the snapshots stay.
    res = copy_migrate(a, "snappy", "--shared-disk", "xvdd")
    assert "xvdd shared, not copied" in res.stderr, res.stderr
    assert re.search(r"Warning: the snapshots of snappy \(s1\) stay with this host", res.stderr), res.stderr
    assert "snappy" in b.domains()
    b.xm("destroy", "snappy")
