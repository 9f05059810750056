"""Issue 9: xend killed (SIGKILL, through pyxen/faults.py) in the middle of
shutdown, save and restore; concurrent operations on one domain; where the
TCP API listens by default.

After every crash the next xend must leave each domain in exactly one
consistent state: no orphan QEMU, tap, run directory (sockets) or state
record, and no save file lost or half-written.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess


from pyxen.testing import state
from pyxen.testing.wait import poll

MAC = "00:16:3e:5a:7e:09"



def start_faulty(h, point: str) -> None:
    h.run("xend", "stop")
    subprocess.run(["xend", "start"], env=dict(h.env, PYXEN_FAULTS=point), check=True)


def xend_died(h) -> None:
    poll(lambda: h.xend("status", check=False).returncode == 3, 60, what="xend to hit its fault point")


def taps(domid: int) -> list[str]:
    return [n for n in os.listdir("/sys/class/net") if n.startswith(f"vif{domid}.")]


def assert_nothing_left(h, domid: int) -> None:
    """No QEMU, tap, run dir or state record of a domain that is gone."""
    assert h.qemu_pids() == []
    assert taps(domid) == []
    assert not (h.root / f"var/run/pyxen/qemu/{domid}").exists()
    assert state.domain_records(h.root) == []


def count_running(h, name: str) -> int:
    with h.console(name) as con:
        con.login()
        out, rc = con.run("echo alive-$((6*7))")
        assert rc == 0 and "alive-42" in out, out
    return 1


def test_xend_killed_after_shutdown_request(host, bridge):
    host.xm("create", str(host.config("sd", vif=[f"mac={MAC}, bridge={bridge}"])))
    domid = host.domains()["sd"]["id"]
    with host.console("sd") as con:
        con.login()                      # acpid is up: the button will be heard
    start_faulty(host, "shutdown-requested")
    res = host.xm("shutdown", "sd", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    xend_died(host)
    host.xend("start")
    # The guest finished powering off with no xend watching; on_poweroff=destroy applies.
    poll(lambda: "sd" not in host.domains(), 120, what="on_poweroff to be applied")
    assert_nothing_left(host, domid)


def test_xend_killed_during_save_before_and_after_commit(host, bridge, tmp_path):
    host.xm("create", str(host.config("sv", vif=[f"mac={MAC}, bridge={bridge}"])))
    domid = host.domains()["sv"]["id"]
    [qemu] = host.qemu_pids()
    count_running(host, "sv")

    # Before the commit point: the stream is complete but not committed.
    # The next xend rolls back: no file, no temp file, the guest runs on.
    start_faulty(host, "save-before-commit")
    target = tmp_path / "sv.chk"
    res = host.xm("save", "sv", str(target), check=False, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    xend_died(host)
    host.xend("start")
    row = host.domains()["sv"]
    assert row["id"] == domid and "p" not in row["state"]
    assert host.qemu_pids() == [qemu] and taps(domid) == [f"vif{domid}.0"]
    assert list(tmp_path.iterdir()) == []
    count_running(host, "sv")

    # After the commit point: the next xend finishes the save: the file is
    # complete and in place, the domain is gone, nothing of it is left.
    start_faulty(host, "save-after-commit")
    res = host.xm("save", "sv", str(target), check=False, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    xend_died(host)
    host.xend("start")
    assert "sv" not in host.domains()
    assert_nothing_left(host, domid)
    assert list(tmp_path.iterdir()) == [target] and target.stat().st_mode & 0o777 == 0o600

    # ... and the file restores.
    host.xm("restore", str(target), timeout=120)
    count_running(host, "sv")
    host.xm("destroy", "sv")


def test_xend_killed_during_restore_rolls_back(host, bridge, tmp_path):
    host.xm("create", str(host.config("rs", vif=[f"mac={MAC}, bridge={bridge}"])))
    domid = host.domains()["rs"]["id"]
    count_running(host, "rs")
    target = tmp_path / "rs.chk"
    host.xm("save", "rs", str(target), timeout=120)
    saved = target.read_bytes()

    start_faulty(host, "restore-after-load")
    res = host.xm("restore", str(target), check=False, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    xend_died(host)
    assert len(host.qemu_pids()) == 1                    # the half-restored QEMU
    host.xend("start")
    # Rolled back: no domain, nothing left; the save file untouched.
    assert "rs" not in host.domains()
    assert host.qemu_pids() == []
    assert not any((host.root / "var/run/pyxen/qemu").iterdir())
    assert state.domain_records(host.root) == []
    assert taps(domid + 1) == []                        # the restore's would-be domid
    assert target.read_bytes() == saved
    host.xm("restore", str(target), timeout=120)
    count_running(host, "rs")
    host.xm("destroy", "rs")
    assert host.qemu_pids() == []


def test_concurrent_operations_on_one_domain_are_serialised(host, tmp_path):
    host.xm("create", str(host.config("cc")))
    disks = []
    for i in range(4):
        p = tmp_path / f"d{i}.img"
        p.write_bytes(f"disk-{i}".encode().ljust(1 << 20, b"\0"))
        disks.append(p)
    # Five attaches race for one vdev; four more attach distinct vdevs, while
    # memory and vCPU changes and pause/unpause interleave with them.
    jobs = [("block-attach", "cc", f"file:{disks[0]}", "xvdb", "r") for _ in range(5)]
    jobs += [("block-attach", "cc", f"file:{disks[i]}", f"xvd{'cdef'[i]}", "r") for i in range(4)]
    jobs += [("mem-set", "cc", str(m)) for m in (100, 110, 120, 128)]
    jobs += [("pause", "cc"), ("unpause", "cc")] * 3
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
        results = list(ex.map(lambda j: host.xm(*j, check=False, timeout=300), jobs))
    for j, r in zip(jobs, results):
        assert "Traceback" not in r.stderr, (j, r.stderr)
        if r.returncode:
            assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, (j, r.stderr)
    races = results[:5]
    assert sum(r.returncode == 0 for r in races) == 1, [r.stderr for r in races]
    assert all("already has a device xvdb" in r.stderr for r in races if r.returncode)
    assert all(r.returncode == 0 for r in results[5:9]), [r.stderr for r in results[5:9]]
    assert all(r.returncode == 0 for r in results[9:13]), [r.stderr for r in results[9:13]]
    # One consistent result: five disks in the config, each once, as the guest sees them.
    if "p" in host.domains()["cc"]["state"]:
        host.xm("unpause", "cc")
    vbds = host.xm("block-list", "cc").stdout
    assert sum(ln.split()[0].isdigit() for ln in vbds.splitlines()[1:]) == 5, vbds
    with host.console("cc") as con:
        con.login()
        for vdev in ("xvdb", "xvdc", "xvdd", "xvde", "xvdf"):
            poll(lambda: con.run(f"test -b /dev/{vdev}")[1] == 0, 60, what=f"{vdev} in the guest")
        out, _ = con.run("dd if=/dev/xvdf bs=6 count=1 2>/dev/null; echo")
        assert "disk-3" in out
    assert host.domains()["cc"]["mem"] in (100, 110, 120, 128)


def listening(port: int) -> set[str]:
    """Local addresses with a TCP listener on *port* (v4 and v6)."""
    out = set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        for ln in open(f).read().splitlines()[1:]:
            local, state = ln.split()[1], ln.split()[3]
            addr, p = local.rsplit(":", 1)
            if int(p, 16) == port and state == "0A":
                out.add(addr)
    return out


def test_tcp_api_binds_to_localhost_unless_configured(make_host):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    h = make_host(f"(accel tcg)\n(xend-http-server yes)\n(xend-port {port})\n")
    addrs = listening(port)
    assert addrs and addrs <= {"0100007F", "00000000000000000000000001000000"}, addrs   # 127.0.0.1, ::1
    h.xend("stop")
    (h.root / "etc/xen/xend-config.sxp").write_text(
        f"(accel tcg)\n(xend-http-server yes)\n(xend-port {port})\n(xend-address '')\n")
    h.xend("start")
    assert listening(port) & {"00000000", "00000000000000000000000000000000"}, listening(port)
