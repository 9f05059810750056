"""Issue 9: nothing lost when xend dies mid-operation, when its state is
corrupt or its disk is full, and under concurrent creates."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess

from pyxen import storekeys
from pyxen.paths import Paths
from pyxen.testing import state
from pyxen.testing.wait import poll


def start_faulty(h, point: str) -> None:
    h.run("xend", "stop")
    env = dict(h.env, PYXEN_FAULTS=point)
    subprocess.run(["xend", "start"], env=env, check=True)


def state_records(h) -> list[str]:
    return state.domain_records(h.root)


def test_xend_killed_during_create_rolls_back(host):
    start_faulty(host, "create-after-qemu-start")
    res = host.xm("create", str(host.config("half")), check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert host.xend("status", check=False).returncode == 3          # xend died at the fault
    host.xend("start")
    assert "half" not in host.domains()
    assert host.qemu_pids() == [] and state_records(host) == []
    assert not any((host.root / "var/run/pyxen/qemu").iterdir())
    host.xm("create", str(host.config("half")))                    # the name is free again
    assert "half" in host.domains()


def test_xend_killed_before_it_knows_qemus_pid_still_rolls_back(host):
    # The narrowest window: QEMU forked, its pid in no file yet.  The next
    # xend finds it by its uuid and working directory.
    start_faulty(host, "qemu-before-pidfile")
    res = host.xm("create", str(host.config("orphan")), check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert host.xend("status", check=False).returncode == 3
    poll(lambda: host.qemu_pids(), 30, what="the orphaned QEMU to be running")
    host.xend("start")
    assert "orphan" not in host.domains()
    poll(lambda: host.qemu_pids() == [], 10, what="the orphaned QEMU to be killed")
    assert state_records(host) == []


def test_xend_killed_during_destroy_finishes_it(host):
    host.xm("create", str(host.config("dying")))
    start_faulty(host, "destroy-after-dying")
    res = host.xm("destroy", "dying", check=False)
    assert res.returncode != 0
    host.xend("start")
    assert "dying" not in host.domains()
    assert host.qemu_pids() == [] and state_records(host) == []


def test_guest_poweroff_while_xend_dead_is_applied_on_restart(host):
    host.xm("create", str(host.config("off")))
    with host.console("off") as con:
        con.login()
    start_faulty(host, "guest-exit")
    host.xm("shutdown", "off", check=False)
    poll(lambda: host.xend("status", check=False).returncode == 3, 60, what="xend to hit the fault")
    assert len(host.qemu_pids()) == 1                              # stopped guest, kept QEMU
    host.xend("start")
    poll(lambda: "off" not in host.domains(), 60, what="on_poweroff=destroy to be applied")
    assert host.qemu_pids() == [] and state_records(host) == []


def test_corrupt_state_is_set_aside_not_fatal(host):
    host.xm("create", str(host.config("good")))
    host.xm("create", str(host.config("bad")))
    bad_uuid = [ln for ln in host.xm("list", "-l", "bad").stdout.splitlines() if "(uuid " in ln][0].split()[1][:-1]
    host.xend("stop")
    with state.open_store(host.root, writable=True) as st:
        st.put(storekeys.config(bad_uuid), b"(vm (name bad) (memory")
    host.xend("start")
    assert "good" in host.domains()
    assert "corrupt state record" in (host.root / "var/log/xen/xend.log").read_text()
    assert state.quarantined(host.root)     # kept for inspection


def test_full_state_disk_gives_clean_error_and_keeps_domains(host):
    host.xm("create", str(host.config("before")))
    state_dir = Paths(host.root).state      # the disk itself is the point here, so its path
    host.xend("stop")
    saved = host.root / "state.saved"
    os.rename(state_dir, saved)
    state_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(state_dir)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{saved}/.", str(state_dir)], check=True)
        with open(state_dir / ".filler", "wb") as f:
            try:
                f.write(b"\0" * (256 << 10))
            except OSError:
                pass
        host.xend("start")
        assert "before" in host.domains()
        res = host.xm("create", str(host.config("after")), check=False)
        assert res.returncode == 1 and "cannot write state" in res.stderr and "Traceback" not in res.stderr
        assert f"no space left on {state_dir}" in res.stderr
        assert "after" not in host.domains() and len(host.qemu_pids()) == 1
        assert "p" not in host.domains()["before"]["state"]
        host.xend("stop")
    finally:
        subprocess.run(["umount", str(state_dir)], check=False)


def test_twenty_concurrent_creates(host):
    cfgs = [host.config(f"c{i:02d}", memory=96) for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        results = list(ex.map(lambda c: host.xm("create", str(c), check=False, timeout=300), cfgs))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    rows = host.domains()
    ids = [rows[f"c{i:02d}"]["id"] for i in range(20)]
    assert len(set(ids)) == 20 and len(host.qemu_pids()) == 20
    # xm list stays responsive while they boot.
    import time
    t0 = time.monotonic()
    host.xm("list")
    assert time.monotonic() - t0 < 10
    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        list(ex.map(lambda i: host.xm("destroy", f"c{i:02d}"), range(20)))
    assert set(host.domains()) == {"Domain-0"} and host.qemu_pids() == []
