"""Issue 16: migration to the same host (``xm migrate [-l] dom localhost``),
as Xen allowed it — moving a running guest onto a freshly started QEMU on
the host it runs on.  Real TCG guests through the real relocation path
(this xend's own TLS relocation server): the guest keeps its state (a file
in tmpfs, its uptime, a counter on its console, its disk, its network), it
gets a new domid and keeps its name and uuid, the old QEMU and its tap are
gone; refusals leave it running; xend killed at each stage leaves exactly
one running guest and one record.

xend runs in a network namespace of its own, with a bridge that has an
address for the guest to ping (the taps vif<domid>.<devid> stay in there).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_cluster import _leftovers, cluster  # noqa: F401  (fixtures: etcd and clustered xends)
from test_migrate import TICK, last, state_files, taps
from test_network import lab  # noqa: F401  (a fixture: namespaces, removed afterwards)
from pyxen.testing.wait import poll

HOST_IP, GUEST_IP = "10.78.0.1", "10.78.0.10"
MIGRATED = re.compile(r"Migrated to \S+ in ([0-9.]+) s, ([0-9.]+) MiB sent, downtime ([0-9.?]+) ms")


@pytest.fixture
def one(lab, make_host):
    """One host (an xend in its own namespace with a relocation server on
    all addresses, or on *listen*), its certificate naming only its
    address — never localhost."""
    def make(listen: str = "", extra: str = "", start: bool = True):
        ns = lab.ns("lh")
        for argv in (("ip", "link", "add", "xenbr0", "type", "bridge"),
                     ("ip", "addr", "add", f"{HOST_IP}/24", "dev", "xenbr0"),
                     ("ip", "link", "set", "xenbr0", "up")):
            lab.exec(ns, *argv)
        h = make_host(f"(accel tcg)\n(xend-relocation-server yes)\n(xend-relocation-address '{listen}')\n"
                      f"{extra}", start=False, netns=ns)
        h.run("pyxen", "ca", check=True)
        h.run("pyxen", "cert", "hosta", "--ip", HOST_IP, check=True)
        if start:
            h.xend("start")
        return h, ns
    return make


def create(host, name, tmp_path, **kw):
    disk = tmp_path / f"{name}-disk.img"
    subprocess.run(["truncate", "-s", "16M", str(disk)], check=True)
    host.xm("create", str(host.config(name, vif=["bridge=xenbr0"], disk=[f"file:{disk},xvda,w"], **kw)))
    return disk


def uuid_of(host, name) -> str:
    return re.search(r"\(uuid ([0-9a-f-]+)\)", host.xm("list", "-l", name).stdout).group(1)


def boot(host, name) -> float:
    """Log in, leave state behind (tmpfs file, shell variable, a disk block,
    an address on eth0), check the network; the guest's uptime."""
    with host.console(name) as con:
        con.login()
        con.run("mkdir -p /tmp && mount -t tmpfs none /tmp 2>/dev/null; echo kept-in-ram > /tmp/mark")
        con.run("echo DISK-MARK-0 | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")
        con.run(f"ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 up")
        out, rc = con.run(f"ping -c 2 -W 5 {HOST_IP}", timeout=40)
        assert rc == 0, out
        return float(last(con.run("cut -d' ' -f1 /proc/uptime")))


def check_guest(host, name, up_before: float, moves: int = 1) -> None:
    """The guest kept its memory, disk and network across the move (the
    *moves*-th: each check leaves the next disk mark)."""
    with host.console(name) as con:
        con.send("\r")
        assert last(con.run("cat /tmp/mark")) == "kept-in-ram"
        assert float(last(con.run("cut -d' ' -f1 /proc/uptime"))) > up_before     # no reboot
        assert last(con.run("dd if=/dev/vda bs=11 count=1 2>/dev/null; echo")) == f"DISK-MARK-{moves - 1}"
        con.run(f"echo DISK-MARK-{moves} | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")
        assert last(con.run("dd if=/dev/vda bs=11 count=1 2>/dev/null; echo")) == f"DISK-MARK-{moves}"
        out, rc = con.run(f"ping -c 2 -W 5 {HOST_IP}", timeout=40)
        assert rc == 0, out


def one_copy(host, lab, ns, name, domid: int) -> None:
    """One row, one QEMU, one tap (the new domid's, on the bridge), one record."""
    rows = host.domains()
    assert [n for n in rows if n != "Domain-0"] == [name]
    assert rows[name]["id"] == domid
    assert len(host.qemu_pids()) == 1
    assert taps(lab, ns) == [f"vif{domid}.0"]
    assert re.search(rf" vif{domid}\.0@?\S*: .* master xenbr0 ", lab.links(ns)), lab.links(ns)
    assert len(state_files(host)) == 2, state_files(host)
    assert len(list((host.root / "var/run/pyxen/qemu").iterdir())) == 1


# ---------------------------------------------------------------------------
def locked(disk) -> bool:
    """A running QEMU holds QEMU's image lock on *disk*: a writer cannot
    open it (qemu-io opens read-write; it only reads)."""
    res = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 512", str(disk)], capture_output=True, text=True)
    return res.returncode != 0 and "lock" in (res.stdout + res.stderr)


def test_live_migration_to_localhost_keeps_the_guest_running(one, lab, tmp_path):
    h, ns = one()
    disk = create(h, "here", tmp_path)
    assert locked(disk)
    uuid, old = uuid_of(h, "here"), h.domains()["here"]["id"]
    [old_pid] = h.qemu_pids()
    up = boot(h, "here")
    with h.console("here") as con:
        con.send("\r")
        con.send("(i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done) &\r")
        con.expect(TICK, timeout=60)
        seen = int(con.child.match.group(1))

    res = h.xm("migrate", "-l", "here", "localhost", timeout=600)
    m = MIGRATED.search(res.stderr)
    assert m and m.group(3) != "?", res.stderr
    print(f"live migration to localhost: {m.group(1)} s, downtime {m.group(3)} ms")

    new = h.domains()["here"]["id"]
    assert new != old                                   # Xen's rule: a new domid, the same name
    assert f"now domain {new} on this same host" in res.stderr, res.stderr
    assert uuid_of(h, "here") == uuid
    assert old_pid not in h.qemu_pids()
    one_copy(h, lab, ns, "here", new)
    # The old QEMU let go of the image lock at the switch-over (the new one
    # could take it, and writes below), and the new one holds it now.
    assert locked(disk)
    with h.console("here") as con:                      # xm console reaches the new QEMU
        con.expect(TICK, timeout=60)
        assert int(con.child.match.group(1)) > seen     # the same counter, still counting
        con.send("kill %1\r")
    check_guest(h, "here", up)


def test_scheduler_cgroup_and_pinning_carry_over(make_host):
    """In the host's own namespaces (cgroups are not mounted in a network
    namespace's /sys), without a vif (no tap in the host's namespace) and
    with the relocation server on a loopback address and a port of its own."""
    from pyxen.hypervisor import cgroups
    port = 20000 + os.getpid() % 20000
    h = make_host(f"(accel tcg)\n(xend-relocation-server yes)\n(xend-relocation-address '127.0.0.1')\n"
                  f"(xend-relocation-port {port})\n", start=False)
    h.run("pyxen", "ca", check=True)
    h.run("pyxen", "cert", "hosta", "--ip", "192.0.2.1", check=True)
    h.xend("start")
    h.xm("create", str(h.config("sched", vcpus=2)))
    uuid = uuid_of(h, "sched")
    with h.console("sched") as con:
        con.login()
    # Settings of the running domain, not only of its config.
    h.xm("vcpu-pin", "sched", "0", "1")
    h.xm("vcpu-pin", "sched", "1", "0")
    h.xm("sched-credit", "-d", "sched", "-w", "512")
    h.xm("sched-sedf", "sched", "-p", "50", "-s", "25")
    sedf = h.xm("sched-sedf", "sched").stdout.splitlines()[1].split()[2:]
    credit = h.xm("sched-credit", "-d", "sched").stdout.split()[-2:]
    old = h.domains()["sched"]["id"]
    h.xm("migrate", "--live", "sched", "localhost", timeout=600)
    assert h.domains()["sched"]["id"] != old and len(h.qemu_pids()) == 1
    rows = [line.split() for line in h.xm("vcpu-list", "sched").stdout.splitlines()[1:]]
    assert [r[-1] for r in rows] == ["1", "0"], rows          # the pinning came along
    assert h.xm("sched-credit", "-d", "sched").stdout.split()[-2:] == credit == ["512", "0"]
    assert h.xm("sched-sedf", "sched").stdout.splitlines()[1].split()[2:] == sedf
    if cgroups.version() is not None:
        # The uuid's group was not removed with the old QEMU: the new one is in it.
        assert cgroups.read(uuid)[0] == 512
        [pid] = h.qemu_pids()
        procs = (cgroups.group_dir(uuid) / "cgroup.procs").read_text().split()
        assert str(pid) in procs, procs


def test_non_live_to_own_address_and_back_through_127_0_0_1(one, lab, tmp_path):
    # The relocation server listens on the host's address only: "localhost"
    # still reaches it (and its certificate names that address only).
    h, ns = one(listen=HOST_IP)
    create(h, "there", tmp_path)
    up = boot(h, "there")
    first = h.domains()["there"]["id"]
    res = h.xm("migrate", "there", HOST_IP, timeout=600)
    assert MIGRATED.search(res.stderr) and len(res.stderr.splitlines()) == 1, res.stderr
    second = h.domains()["there"]["id"]
    assert second != first
    one_copy(h, lab, ns, "there", second)
    check_guest(h, "there", up)
    # Paused, it arrives paused.
    h.xm("pause", "there")
    h.xm("migrate", "there", "127.0.0.1", timeout=600)
    rows = h.domains()
    assert rows["there"]["state"] == "--p---" and rows["there"]["id"] not in (first, second)
    one_copy(h, lab, ns, "there", rows["there"]["id"])
    h.xm("unpause", "there")
    check_guest(h, "there", up, moves=2)


def test_refusals_leave_the_guest_running(one, lab, tmp_path):
    h, ns = one()
    create(h, "stays", tmp_path)
    domid = h.domains()["stays"]["id"]
    res = h.xm("migrate", "--copy-storage", "stays", "localhost", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--copy-storage moves disks to another host" in res.stderr
    # A vif named with vifname= cannot have a second tap of that name.
    h.xm("create", str(h.config("named", vif=["bridge=xenbr0,vifname=pxnamed0"])))
    res = h.xm("migrate", "-l", "named", "localhost", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "vifname pxnamed0 is in use" in res.stderr and "named is still running here" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    rows = h.domains()
    assert rows["stays"]["id"] == domid and rows["stays"]["state"] in ("r-----", "-b----")
    assert rows["named"]["state"] in ("r-----", "-b----")
    assert len(h.qemu_pids()) == 2 and len(state_files(h)) == 4
    with h.console("named") as con:
        con.login()
        assert last(con.run("echo alive")) == "alive"


@pytest.mark.parametrize("point, committed", [
    ("migrate-target-preparing", False),     # before the target QEMU starts
    ("migrate-target-receiving", False),     # the stream about to flow
    ("migrate-source-commit", False),        # the source recorded its commit point
    ("migrate-target-loaded", False),        # just before the commit
    ("migrate-target-committed", True),      # just after it, before the guest resumed
])
def test_xend_killed_during_a_localhost_migration_leaves_one_guest(one, lab, tmp_path, point, committed):
    h, ns = one(extra="", start=False)
    h.env["PYXEN_FAULTS"] = point
    h.xend("start")
    del h.env["PYXEN_FAULTS"]
    create(h, "crash", tmp_path)
    old = h.domains()["crash"]["id"]
    up = boot(h, "crash")
    res = h.xm("migrate", "-l", "crash", "localhost", check=False, timeout=600)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    poll(lambda: h.xend("status", check=False).returncode == 3, 30, what="xend to die at the fault")
    h.xend("start")
    rows = h.domains()
    assert rows["crash"]["state"] in ("r-----", "-b----"), rows
    domid = rows["crash"]["id"]
    assert (domid != old) if committed else (domid == old)
    poll(lambda: len(h.qemu_pids()) == 1, 30, what="exactly one QEMU")
    one_copy(h, lab, ns, "crash", domid)
    check_guest(h, "crash", up)


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_xend_killed_mid_stream_leaves_the_source_running(one, lab, tmp_path, how):
    """A real mid-transfer kill (not at a fault point), or an `xend stop`:
    the stream is throttled, and xend goes while its progress says bytes
    are flowing."""
    h, ns = one()
    create(h, "midway", tmp_path, memory=192)
    old = h.domains()["midway"]["id"]
    up = boot(h, "midway")
    with h.console("midway") as con:
        # Memory that cannot be compressed away: at 4 MiB/s the stream takes a while.
        con.run("dd if=/dev/urandom of=/tmp/fill bs=1M count=48 2>/dev/null", timeout=120)
    p = subprocess.Popen(["xm", "migrate", "--progress", "--live", "-r", "4", "midway", "localhost"],
                         env=h.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = re.compile(r"Migrating midway to \S+:\s+\d+% ([0-9.]+) MiB sent")
    for line in p.stderr:
        m = sent.search(line)
        if m and float(m.group(1)) > 1:
            break
    else:
        raise AssertionError("the migration ended before its stream was seen flowing")
    # Two QEMUs, one domain to the user (the source, until the commit).
    assert len(h.qemu_pids()) == 2
    listed = [line.split()[:2] for line in h.xm("list").stdout.splitlines()[1:]]
    assert listed.count(["midway", str(old)]) == 1 and [n for n, _ in listed].count("midway") == 1, listed
    if how == "kill":
        os.kill(int((h.root / "var/run/pyxen/xend.pid").read_text()), 9)
    else:
        h.xend("stop")
    p.communicate(timeout=120)
    assert p.returncode != 0
    h.xend("start")
    rows = h.domains()
    assert rows["midway"]["id"] == old and rows["midway"]["state"] in ("r-----", "-b----"), rows
    poll(lambda: len(h.qemu_pids()) == 1, 30, what="exactly one QEMU")
    one_copy(h, lab, ns, "midway", old)
    check_guest(h, "midway", up)


def test_in_a_cluster_the_lock_stays_with_this_host(cluster, tmp_path):
    """Migrating to this host's own cluster name: the domain lock and the
    claim on its disk stay this host's all along; destroyed, both go."""
    c = cluster(names=("a",), members=1)
    a = c.hosts["a"]
    disk = Path(tempfile.mkdtemp(prefix="pxshared", dir="/tmp")) / "cl.img"
    disk.write_bytes(b"\0" * (4 << 20))
    try:
        res = a.xm("create", "--host", "a", str(a.config("cl", disk=[f"file:{disk},xvdb,w"])), check=False)
        assert res.returncode == 0, res.stderr
        uuid, old = uuid_of(a, "cl"), a.domains()["cl"]["id"]
        claims = c.ctl("get", "--prefix", "cluster/claims/", "--keys-only").stdout
        assert f"/by/{uuid}@a" in claims
        with a.console("cl") as con:
            con.login()
        res = a.xm("migrate", "--live", "cl", "a", check=False, timeout=600)
        assert res.returncode == 0, res.stderr
        assert a.domains()["cl"]["id"] != old and len(a.qemu_pids()) == 1
        assert c.owner(uuid) == "a"
        assert c.get("cluster/names/cl")["host"] == "a"
        assert c.ctl("get", "--prefix", "cluster/claims/", "--keys-only").stdout == claims
        assert c.ctl("get", f"domains/{uuid}/config", "--keys-only").stdout.strip()
        with a.console("cl") as con:
            con.send("\r")
            assert last(con.run("echo lock-kept")) == "lock-kept"
        a.xm("destroy", "cl")
        assert c.owner(uuid) is None
        assert f"/by/{uuid}@a" not in c.ctl("get", "--prefix", "cluster/claims/", "--keys-only").stdout
    finally:
        shutil.rmtree(disk.parent, ignore_errors=True)


def test_hvm_guest_with_vnc_moves_to_a_new_qemu_here(one, hvm_media, tmp_path):
    """An HVM guest (IDE disk, emulated NIC, VNC on a display chosen by
    domid): the new QEMU has its own VNC server, which shows the guest."""
    from test_hvm import hvm_config, screen_text, vnc_addr
    h, ns = one()
    disk = tmp_path / "hvm-disk.img"
    shutil.copy(hvm_media["disk"], disk)
    hvm_config(h, "hvmhere", disk=[f"file:{disk},ioemu:hda,w"], vif=["type=ioemu,bridge=xenbr0,model=e1000"],
               vnc=1, vncunused=1, boot="c")
    h.xm("create", str(h.root / "etc/xen/hvmhere"))
    with h.console("hvmhere") as con:
        con.login()
        con.run("hvmvar=kept")
    before = vnc_addr(h, "hvmhere")
    h.xm("migrate", "--live", "hvmhere", "localhost", timeout=600)
    assert len(h.qemu_pids()) == 1
    after = vnc_addr(h, "hvmhere")
    assert after != before, (before, after)
    with h.console("hvmhere") as con:
        con.send("\r")
        assert last(con.run("echo $hvmvar")) == "kept"
        con.run("echo SAME HOST SCREEN OK > /dev/tty0")
    assert "SAME HOST SCREEN OK" in " ".join(screen_text(h, "hvmhere", tmp_path).upper().split())


def test_a_host_without_memory_for_the_second_qemu_refuses_before_anything_moves(one, lab):
    """Both QEMUs run during the switch-over: the memory check counts both."""
    total = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal:"))) // 1024
    h, ns = one(extra=f"(dom0-min-mem {total - 200})\n")      # room for one 128 MiB guest, not two
    h.xm("create", str(h.config("tight", vif=["bridge=xenbr0"])))
    domid = h.domains()["tight"]["id"]
    res = h.xm("migrate", "--live", "tight", "localhost", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Not enough memory for domain tight" in res.stderr and "tight is still running here" in res.stderr
    assert h.domains()["tight"]["id"] == domid and len(h.qemu_pids()) == 1
    assert taps(lab, ns) == [f"vif{domid}.0"] and len(state_files(h)) == 2
    with h.console("tight") as con:
        con.login()
        assert last(con.run("echo alive")) == "alive"
