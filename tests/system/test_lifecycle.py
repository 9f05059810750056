"""Issue 2 end to end: real guests under TCG, driven only through xm and xend."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from pyxen.testing.wait import poll



def test_create_console_pause_shutdown_recreate_destroy(host):
    cfg = host.config("life")
    out = host.xm("create", str(cfg)).stdout
    assert f'Using config file "{cfg}".' in out
    m = re.search(r"Started domain life \(id=(\d+)\)", out)
    assert m, out
    domid = int(m.group(1))
    assert domid >= 1

    con = host.console("life")
    con.login()
    out, rc = con.run("uname -r")
    assert rc == 0 and out.strip().endswith("-cloud-amd64")
    out, rc = con.run("sh -c 'echo oops; exit 3'")
    assert (out, rc) == ("oops\n", 3)
    assert con.close() == 0          # Ctrl-] detached cleanly
    rows = host.domains()
    assert rows["life"]["id"] == domid
    assert rows["life"]["mem"] == 128 and rows["life"]["vcpus"] == 1
    assert rows["Domain-0"]["id"] == 0
    assert re.fullmatch(r"[r-][b-]----", rows["life"]["state"])
    assert host.xm("domid", "life").stdout.strip() == str(domid)
    assert host.xm("domname", str(domid)).stdout.strip() == "life"

    # Make the guest burn CPU so its time visibly moves while it runs.
    with host.console("life") as con:
        con.login()
        _, rc = con.run("(while :; do :; done) & echo $! > /tmp/busy")
        assert rc == 0
    t0 = host.domains()["life"]["time"]
    poll(lambda: host.domains()["life"]["time"] >= t0 + 0.5, 30, what="CPU time to grow")

    host.xm("pause", "life")
    paused = host.domains()["life"]
    assert paused["state"] == "--p---"
    # Frozen: several samples over two seconds all equal.
    samples = []
    for _ in range(8):
        samples.append(host.domains()["life"]["time"])
        time.sleep(0.25)
    assert len(set(samples)) == 1, samples
    assert host.xm("pause", "life").returncode == 0   # idempotent, as in Xen

    host.xm("unpause", "life")
    poll(lambda: host.domains()["life"]["time"] > samples[-1] + 0.3, 30, what="CPU time after unpause")
    assert "p" not in host.domains()["life"]["state"]

    with host.console("life") as con:
        con.login()
        _, rc = con.run("kill $(cat /tmp/busy)")
        assert rc == 0

    res = host.xm("shutdown", "-w", "life", timeout=120)
    assert "life" not in host.domains()
    log = (host.root / "var/log/xen/console/guest-life.log").read_text(errors="replace")
    # It went down through the guest's own init, not a kill.
    assert "The system is going down" in log or "Power down" in log, log[-2000:]
    assert host.qemu_pids() == []

    # Same config again: a new id, never the old one.
    out = host.xm("create", str(cfg)).stdout
    new_id = int(re.search(r"\(id=(\d+)\)", out).group(1))
    assert new_id > domid
    with host.console("life") as con:
        con.wait_login_prompt()
    host.xm("destroy", "life")
    assert "life" not in host.domains()
    assert host.qemu_pids() == []


def test_domains_survive_xend_restart_and_kill9(host):
    for n in ("keep1", "keep2"):
        host.xm("create", str(host.config(n)))
    for n in ("keep1", "keep2"):
        with host.console(n) as con:
            con.login()
            _, rc = con.run(f"echo {n} > /tmp/marker")
            assert rc == 0
    before = host.domains()
    pids = sorted(host.qemu_pids())
    assert len(pids) == 2

    host.xm("create", "-p", str(host.config("created-paused")))
    host.xend("restart")
    assert host.domains()["created-paused"]["state"] == "--p---"    # paused before it ever ran
    host.xm("destroy", "created-paused")
    after = host.domains()
    assert {n: after[n]["id"] for n in ("keep1", "keep2")} == {n: before[n]["id"] for n in ("keep1", "keep2")}
    assert sorted(host.qemu_pids()) == pids

    pid = int((host.root / "var/run/pyxen/xend.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    poll(lambda: not os.path.exists(f"/proc/{pid}"), 10, what="xend to die")
    assert sorted(host.qemu_pids()) == pids          # guests kept running without xend
    assert host.xend("status", check=False).returncode == 3
    host.xend("start")
    after = host.domains()
    assert {n: after[n]["id"] for n in ("keep1", "keep2")} == {n: before[n]["id"] for n in ("keep1", "keep2")}
    assert sorted(host.qemu_pids()) == pids          # adopted, not duplicated
    # Consoles and QMP work again after adoption.
    for n in ("keep1", "keep2"):
        with host.console(n) as con:
            con.login()
            out, rc = con.run("cat /tmp/marker")
            assert (out.strip(), rc) == (n, 0)
    host.xm("pause", "keep1")
    assert host.domains()["keep1"]["state"] == "--p---"
    host.xm("unpause", "keep1")
    res = host.xm("shutdown", "-a", "-w", timeout=120)
    assert "All domains terminated" in res.stdout
    assert set(host.domains()) == {"Domain-0"}
    assert host.qemu_pids() == []


def test_reboot_restarts_the_guest(host):
    host.xm("create", str(host.config("rb")))
    with host.console("rb") as con:
        con.login()
        _, rc = con.run("echo before > /tmp/state")
        domid = host.domains()["rb"]["id"]
        host.xm("reboot", "rb")
        con.expect("pyxen-init: started", 120)     # it booted again
        con.login()
        out, rc = con.run("cat /tmp/state 2>/dev/null || echo fresh")
        assert out.strip() == "fresh"              # a real reboot: tmpfs state gone
    assert host.domains()["rb"]["id"] == domid


def test_xmexample2_with_vmid(host):
    res = host.xm("create", "xmexample2", "vmid=3")
    assert "Started domain VM3" in res.stdout
    rows = host.domains()
    assert rows["VM3"]["vcpus"] == 2
    with host.console("VM3") as con:
        con.login()
        out, _ = con.run("cat /proc/cmdline; grep -c ^processor /proc/cpuinfo")
        assert "VMID=3" in out
        assert out.strip().splitlines()[-1] == "2"
    long = host.xm("list", "-l", "VM3").stdout
    assert long.startswith("(domain\n")
    assert "    (name VM3)\n" in long
    assert re.search(r"^    \(domid \d+\)$", long, re.M)
    assert "(args '4 VMID=3')" in long


def test_console_exported_on_tcp(make_host):
    import socket
    h = make_host("(accel tcg)\n(xend-console-server yes)\n")
    h.xm("create", str(h.config("tcpcon")))
    domid = h.domains()["tcpcon"]["id"]
    token = (h.root / "etc/xen/xend-http-token").read_text().strip()
    # A root shell for whoever reaches the port, so it asks for the API token first.
    for wrong in (b"guess\r\n", b"x" * 5000 + b"\r\n", b""):
        bad = socket.create_connection(("127.0.0.1", 9600 + domid), timeout=60)
        bad.settimeout(60)
        assert b"API token" in bad.recv(4096)
        bad.sendall(wrong)
        if not wrong:
            bad.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := bad.recv(65536):
            rest += chunk
        assert b"login" not in rest and b"pyxen-init" not in rest, rest[-300:]
        bad.close()
    assert "wrong token" in (h.root / "var/log/xen/xend.log").read_text()
    s = socket.create_connection(("127.0.0.1", 9600 + domid), timeout=5)
    s.settimeout(5)
    assert b"API token" in s.recv(4096)
    s.sendall(token.encode() + b"\r\n")
    got = b""
    deadline = time.monotonic() + 120
    while b"login: " not in got:
        assert time.monotonic() < deadline, got[-500:]
        s.sendall(b"\r")
        s.settimeout(2)
        try:
            got += s.recv(65536)
        except socket.timeout:
            pass
    # One client at a time: xm console is refused while TCP holds the console.
    res = h.xm("console", "tcpcon", check=False, timeout=30)
    assert res.returncode == 1 and "in use" in res.stderr
    s.close()
    # Bound to localhost only, by default.
    lines = open("/proc/net/tcp").read().splitlines()[1:]
    port_hex = "%04X" % (9600 + domid)
    local = [ln.split()[1] for ln in lines if ln.split()[1].endswith(":" + port_hex) and ln.split()[3] == "0A"]
    assert local == ["0100007F:" + port_hex]
