"""Issue 6 on real guests: vCPUs, memory, sysrq, core dumps, rename, on_crash,
scheduler weights and host memory accounting."""

from __future__ import annotations

import os
import signal
import time

from pyxen.testing.wait import poll


def test_vcpu_set_mem_set_sysrq_dump_rename(make_host):
    h = make_host("(accel tcg)\n(minimum-restart-time 0)\n")
    h.xm("create", str(h.config("run", vcpus=2, maxvcpus=3, memory=128, maxmem=192)))
    with h.console("run") as con:
        con.login()
        out, _ = con.run("cat /sys/devices/system/cpu/online /sys/devices/system/cpu/present")
        assert out.split() == ["0-1", "0-2"]
        assert [ln.split()[3] for ln in h.xm("vcpu-list", "run").stdout.splitlines()[1:]][2] == "-"

        h.xm("vcpu-set", "run", "3")
        assert con.run("cat /sys/devices/system/cpu/online")[0].strip() == "0-2"
        assert h.domains()["run"]["vcpus"] == 3
        h.xm("vcpu-set", "run", "1")
        assert con.run("cat /sys/devices/system/cpu/online")[0].strip() == "0"
        rows = [ln.split() for ln in h.xm("vcpu-list", "run").stdout.splitlines()[1:]]
        assert [(r[2], r[3], r[4]) for r in rows][1:] == [("1", "-", "--p"), ("2", "-", "--p")]
        res = h.xm("vcpu-set", "run", "4", check=False)
        assert res.returncode == 1 and "vcpus must be 1-3" in res.stderr

        def memtotal():
            return int(con.run("grep MemTotal /proc/meminfo")[0].split()[1]) // 1024
        start = memtotal()
        h.xm("mem-set", "run", "96")
        poll(lambda: memtotal() <= start - 24, 30, 0.5, "the balloon to inflate")
        assert h.domains()["run"]["mem"] == 96
        h.xm("mem-set", "run", "192")
        poll(lambda: memtotal() >= start + 40, 30, 0.5, "the balloon to deflate")
        res = h.xm("mem-set", "run", "500", check=False)
        assert res.returncode == 1 and "maxmem" in res.stderr
        res = h.xm("mem-max", "run", "64", check=False)
        assert res.returncode == 1 and "below the domain's current memory" in res.stderr

        h.xm("sysrq", "run", "s")
        con.expect("Emergency Sync", 30)

    core = h.root / "run.core"
    res = h.xm("dump-core", "run", str(core))
    assert "Dumping core of domain: run ..." in res.stdout
    assert core.read_bytes()[:4] == b"\x7fELF" and core.stat().st_size > 128 << 20
    assert "p" not in h.domains()["run"]["state"]          # resumed after the dump

    h.xm("rename", "run", "walk")
    assert "walk" in h.domains() and "run" not in h.domains()
    assert "(name walk)" in h.xm("list", "-l", "walk").stdout
    h.xend("restart")
    assert "walk" in h.domains()                           # the new name persisted


def test_on_crash_restart_after_panic_and_qemu_kill(make_host):
    h = make_host("(accel tcg)\n(minimum-restart-time 0)\n")
    h.xm("create", str(h.config("crashy", on_crash="restart")))
    domid = h.domains()["crashy"]["id"]
    with h.console("crashy") as con:
        con.login()
        con.send("echo c > /proc/sysrq-trigger\r")
        con.expect("Kernel panic", 60)
        con.expect("pyxen-init: started", 120)             # reset and booted again
    assert h.domains()["crashy"]["id"] == domid
    assert "guest crash; on_crash=restart" in (h.root / "var/log/xen/xend.log").read_text()

    # QEMU itself dies: the domain is restarted with a fresh QEMU.
    [pid] = h.qemu_pids()
    os.kill(pid, signal.SIGKILL)
    poll(lambda: h.qemu_pids() and h.qemu_pids() != [pid], 60, what="a new QEMU")
    with h.console("crashy") as con:
        con.wait_login_prompt()

    h.xm("create", str(h.config("keep", on_crash="preserve")))
    with h.console("keep") as con:
        con.login()
        con.send("echo c > /proc/sysrq-trigger\r")
        con.expect("Kernel panic", 60)
    poll(lambda: h.domains()["keep"]["state"] == "----c-", 30, what="crashed state")
    h.xm("destroy", "keep")
    assert "keep" not in h.domains()


def test_crash_loop_protection(host):
    """A domain that crashes within minimum-restart-time is not restarted."""
    host.xm("create", str(host.config("loop", on_crash="restart")))
    with host.console("loop") as con:
        con.login()
        con.send("echo c > /proc/sysrq-trigger\r")
    poll(lambda: "loop" not in host.domains(), 60, what="the domain to be destroyed")
    assert "minimum-restart-time" in (host.root / "var/log/xen/xend.log").read_text()


def test_credit_weights_share_a_cpu_two_to_one(host):
    for name, weight in (("heavy", 512), ("light", 256)):
        host.xm("create", str(host.config(name, cpus="0", cpu_weight=weight)))
    for name in ("heavy", "light"):
        with host.console(name) as con:
            con.login()
            con.run("(while :; do :; done) & echo started")
    rows = host.domains()
    t0 = {n: rows[n]["time"] for n in ("heavy", "light")}
    poll(lambda: host.domains()["light"]["time"] - t0["light"] >= 2.0, 60, 0.25, "CPU time")
    rows = host.domains()
    heavy = rows["heavy"]["time"] - t0["heavy"]
    light = rows["light"]["time"] - t0["light"]
    assert 1.5 <= heavy / light <= 2.6, (heavy, light)


def test_dom0_min_mem_refuses_what_does_not_fit(make_host):
    total = int(open("/proc/meminfo").readline().split()[1]) // 1024
    h = make_host(f"(accel tcg)\n(dom0-min-mem {total - 200})\n")
    h.xm("create", str(h.config("fits", memory=128)))
    res = h.xm("create", str(h.config("toobig", memory=128)), check=False)
    assert res.returncode == 1 and "Not enough memory for domain toobig" in res.stderr
    assert "toobig" not in h.domains() and len(h.qemu_pids()) == 1


def test_top_batch_dmesg_uptime_info(host):
    host.xm("create", str(host.config("watch")))
    with host.console("watch") as con:
        con.login()
        con.run("(while :; do :; done) & echo started")
    out = host.xm("top", "-b", "-i", "2", "-d", "1").stdout.splitlines()
    assert out[0].startswith("xentop - ") and "(tcg)" in out[0]
    assert out[1].startswith("2 domains: ")
    headers = [i for i, ln in enumerate(out) if ln.lstrip().startswith("NAME")]
    assert len(headers) == 2                      # two iterations
    second = {ln.split()[0]: ln.split() for ln in out[headers[1] + 1:]}
    assert float(second["watch"][3]) > 30.0        # CPU(%) of a busy guest
    assert second["watch"][1] == "-----r" or second["watch"][1] == "--b---" or "r" in second["watch"][1]
    assert "xentop - " in host.run("xentop", "-b", "-i", "1").stdout
    dmesg = host.xm("dmesg").stdout
    assert dmesg.startswith("(XEN) ") and "watch: started (domid" in dmesg
    host.xm("dmesg", "-c")
    assert host.xm("dmesg").stdout == ""
    up = host.xm("uptime").stdout.splitlines()
    assert up[0].split() == ["Name", "ID", "Uptime"]
    assert any(ln.split()[0] == "watch" for ln in up[1:])
    info = dict((k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in host.xm("info").stdout.splitlines()))
    for k in ("nr_cpus", "total_memory", "free_memory", "xen_major", "xen_minor", "xen_pagesize", "cores_per_socket"):
        assert info[k].isdigit(), k
    assert info["cc_compiler"].startswith("gcc version") and info["accelerator"] == "tcg"


def test_xendomains_auto_start_and_shutdown_stop(host):
    """Without XENDOMAINS_SAVE: start creates the auto domains, stop shuts them down."""
    auto = host.root / "etc/xen/auto"
    for n in ("auto1", "auto2"):
        cfg = host.config(n)
        (auto / n).symlink_to(cfg)
    (host.root / "etc/default").mkdir(parents=True)
    (host.root / "etc/default/xendomains").write_text(
        'XENDOMAINS_SAVE=""\nXENDOMAINS_CREATE_USLEEP=0\nXENDOMAINS_SHUTDOWN="--wait"\n')
    res = host.run("xendomains", "start", check=True)
    assert "auto1" in res.stdout and "auto2" in res.stdout
    assert {"auto1", "auto2"} <= set(host.domains())
    with host.console("auto1") as con:
        con.wait_login_prompt()
    assert host.run("xendomains", "status").returncode == 0
    host.run("xendomains", "start", check=True)          # idempotent: nothing created twice
    assert len(host.qemu_pids()) == 2
    host.xm("destroy", "auto2")
    res = host.run("xendomains", "status")
    assert res.returncode == 3 and "auto2" in res.stdout
    res = host.run("xendomains", "stop", check=True)
    assert res.stdout.splitlines()[0] == "Shutting down Xen domains: auto1(shut)"
    assert set(host.domains()) == {"Domain-0"}
    log = (host.root / "var/log/xen/console/guest-auto1.log").read_text(errors="replace")
    assert "The system is going down" in log            # a clean shutdown, not a kill


def test_sched_sedf_and_bvt_map_onto_cgroups(host):
    from pyxen.hypervisor import cgroups
    host.xm("create", str(host.config("edf")))
    uuid = [ln for ln in host.xm("list", "-l", "edf").stdout.splitlines() if "(uuid " in ln][0].split()[1][:-1]
    out = host.xm("sched-sedf", "edf").stdout.splitlines()
    assert out[0] == "Name                                ID Period(ms) Slice(ms) Lat(ms) Extra Weight"
    host.xm("sched-sedf", "edf", "-p", "20", "-s", "5", "-e", "0")
    assert host.xm("sched-sedf", "edf").stdout.splitlines()[1].split()[2:] == ["20.0", "5.0", "0.0", "0", "256"]
    assert cgroups.read(uuid) == (256, 25)            # a 5/20 ms slice is a 25% cap
    host.xm("sched-sedf", "edf", "-e", "1", "-w", "768")
    assert cgroups.read(uuid) == (768, 0)
    host.xm("sched-bvt", "edf", "20", "0", "0", "0", "0")  # mcuadv 20 -> weight 128
    assert host.xm("sched-credit", "-d", "edf").stdout.splitlines()[1].split()[2:] == ["128", "0"]
    res = host.xm("sched-sedf", "edf", "-p", "10", "-s", "50", check=False)
    assert res.returncode == 1 and "slice must be" in res.stderr


def test_sched_sedf_prints_back_what_was_set_across_restart_and_save(host):
    """Xen kept period, slice, latency and extratime on their own (16):
    set, they print back as set; the cap is still derived from them; they
    survive an xend restart and a save/restore."""
    from pyxen.hypervisor import cgroups

    def sedf(name):
        return host.xm("sched-sedf", name).stdout.splitlines()[1].split()[2:]

    def uuid(name):
        return [ln for ln in host.xm("list", "-l", name).stdout.splitlines() if "(uuid " in ln][0].split()[1][:-1]
    host.xm("create", str(host.config("indep")))
    host.xm("sched-sedf", "indep", "-p", "50.0", "-s", "25.0")
    assert sedf("indep") == ["50.0", "25.0", "0.0", "1", "256"]      # extratime 1: as it was, no cap
    assert cgroups.read(uuid("indep")) in (None, (256, 0))           # no cap (no cgroup needed at all)
    host.xm("sched-sedf", "indep", "-l", "10", "-e", "0")
    assert sedf("indep") == ["50.0", "25.0", "10.0", "0", "256"]
    assert cgroups.read(uuid("indep")) == (256, 50)                   # 25 of 50 ms: a 50% cap
    host.xend("restart")
    assert sedf("indep") == ["50.0", "25.0", "10.0", "0", "256"]
    save = host.root / "indep.save"
    host.xm("save", "indep", str(save))
    host.xm("restore", str(save))
    assert sedf("indep") == ["50.0", "25.0", "10.0", "0", "256"]
    assert cgroups.read(uuid("indep")) == (256, 50)
    host.xm("destroy", "indep")


def test_xendomains_save_cycle_survives_host_restart(host):
    """xendomains stop; xend stop; xend start; xendomains start: both domains
    come back from their save files with their state, nothing lost."""
    save = host.root / "var/lib/xendomains-save"
    (host.root / "etc/default").mkdir(parents=True, exist_ok=True)
    (host.root / "etc/default/xendomains").write_text(
        f'XENDOMAINS_SAVE="{save}"\nXENDOMAINS_CREATE_USLEEP=0\n')
    for n in ("cyc1", "cyc2"):
        (host.root / "etc/xen/auto" / n).symlink_to(host.config(n))
    host.run("xendomains", "start", check=True)
    for n in ("cyc1", "cyc2"):
        with host.console(n) as con:
            con.login()
            con.run(f"echo {n}-state > /tmp/keep")
    res = host.run("xendomains", "stop", check=True)
    # Saved, and says so (Xen's "(save)"), not only "Shutting down".
    assert res.stdout.splitlines()[0] == "Shutting down Xen domains: cyc1(save) cyc2(save)"
    assert set(host.domains()) == {"Domain-0"}
    assert sorted(p.name for p in save.iterdir()) == ["cyc1", "cyc2"]
    res = host.run("xendomains", "status")
    # Each saved auto domain once.
    assert res.returncode == 3 and res.stdout.strip() == (
        "Checking for xendomains: missing cyc1 (saved, not restored), cyc2 (saved, not restored)")
    assert all(p.read_bytes()[:16] == b"LinuxGuestRecord" for p in save.iterdir())
    host.xend("stop")
    host.xend("start")
    res = host.run("xendomains", "start", check=True)
    assert "Restoring" in res.stdout
    assert {"cyc1", "cyc2"} <= set(host.domains()) and len(host.qemu_pids()) == 2   # restored, not re-created
    assert list(save.iterdir()) == []
    for n in ("cyc1", "cyc2"):
        with host.console(n) as con:
            con.login()
            out, _ = con.run("cat /tmp/keep")
            assert out.strip() == f"{n}-state"                 # the running state came back
    assert host.run("xendomains", "status").returncode == 0
