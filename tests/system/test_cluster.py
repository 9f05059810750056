"""Issue 18's core end to end: xends on a three-member etcd with TLS, each
xend and each etcd member in its own network namespace joined by veths to
a hub bridge (pyxen.testing.clusternet), real TCG guests.

What is checked: a domain created on A is refused on B naming A; a live
migration moves the lock in one step (an independent etcdctl watch sees
one put naming B, never a delete or a second owner); kill -9 of A's xend
leaves the lock held (B still refused) and a restarted xend takes the
same lease back; A cut off from etcd by nftables (inside A's namespace)
pauses its guest before its lease can expire, and resumes it once it
holds the lock again; with one etcd member of three dead everything
works, with two dead no create succeeds (one clear line) and the running
guest keeps running until the fence margin, then pauses.

Timings: lease TTL 5 s, fence margin 2 s (xend's defaults are 10 and 3).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from pyxen import pki
from pyxen.testing import clusternet
from pyxen.testing import etcd as etcdtest
from pyxen.testing.wait import poll

TTL, MARGIN = 5, 2


class Cluster:
    def __init__(self, net, etcd, hosts, probe):
        self.net, self.etcd, self.hosts, self.probe = net, etcd, hosts, probe

    def ctl(self, *args, **kw):
        return self.etcd.etcdctl(*args, ns=self.probe, **kw)

    def get(self, key: str) -> dict | None:
        res = self.ctl("get", key, "--print-value-only")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout) if res.stdout.strip() else None

    def owner(self, uuid: str) -> str | None:
        rec = self.get(f"cluster/owners/{uuid}")
        return rec["host"] if rec else None


@pytest.fixture(autouse=True)
def _leftovers():
    """What the cluster fixture made, removed last: this autouse fixture is
    set up first, so it is torn down after make_host's cleanup has
    destroyed the domains and stopped the xends (which need etcd for it)."""
    things = []
    yield things
    for obj in reversed(things):
        if isinstance(obj, etcdtest.EtcdCluster):
            obj.remove()
        else:
            obj.cleanup()


@pytest.fixture
def cluster(make_host, _leftovers):
    """make(names=("a", "b"), ttl=TTL, env={host: {VAR: value}}): three etcd
    members and the xends, started (each with its extra environment)."""
    def make(names=("a", "b"), ttl=TTL, members=3, env=None):
        why = etcdtest.available()
        if why:     # the Makefile installs it; a missing etcd is a broken machine, not a skip
            pytest.fail(why)
        net = clusternet.ClusterNet()
        _leftovers.append(net)
        spaces, addrs = [], []
        for i in range(members):
            ns, ip = net.add(f"e{i}", 11 + i)
            spaces.append(ns)
            addrs.append(ip)
        probe, _ = net.add("probe", 250)
        etcd = etcdtest.EtcdCluster(Path(tempfile.mkdtemp(prefix="pxetcd", dir="/tmp")), members, spaces, addrs)
        _leftovers.append(etcd)
        etcd.start()
        hosts = {}
        for j, name in enumerate(names):
            ns, ip = net.add(name, 21 + j)
            net.exec(ns, "ip", "link", "add", "xenbr0", "type", "bridge")
            net.exec(ns, "ip", "link", "set", "xenbr0", "up")
            cfg = (f"(accel tcg)\n(xend-relocation-server yes)\n(xend-relocation-address '{ip}')\n"
                   f"(xend-cluster-etcd '{' '.join(etcd.endpoints)}')\n(xend-cluster-name '{name}')\n"
                   f"(xend-cluster-lease-ttl {ttl})\n(xend-cluster-fence-margin {MARGIN})\n")
            h = make_host(cfg, start=False, netns=ns)
            # One CA for etcd, the xends' client certificates and relocation.
            pki.make_host_cert(etcd.pki, name, ips=[ip], out=h.root / "etc/xen/pki")
            h.ip, h.ns, h.name = ip, ns, name
            h.env.update((env or {}).get(name, {}))     # e.g. PYXEN_FAULTS for one host's xend
            hosts[name] = h
        for h in hosts.values():
            h.xend("start")
        return Cluster(net, etcd, hosts, probe)
    return make


def create(h, name, **kw):
    """Plain xm create on *h* (placement may send it elsewhere; test_clusterops uses this)."""
    return h.xm("create", str(h.config(name, **kw)), check=False)


def create_here(h, name, **kw):
    """xm create on *h* itself (placement would pick the emptiest host)."""
    return h.xm("create", "--host", h.name, str(h.config(name, **kw)), check=False)


def uuid_of(h, name) -> str:
    return re.search(r"\(uuid ([0-9a-f-]+)\)", h.xm("list", "-l", name).stdout).group(1)


def state(h, name) -> str:
    return h.domains()[name]["state"]


def refused(res, host: str, name: str) -> None:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"domain {name} is running on host {host}" in res.stderr, res.stderr


def xend_log(h) -> str:
    return (h.root / "var/log/xen/xend.log").read_text(errors="replace")


# ---------------------------------------------------------------------------
def test_a_second_host_is_refused_and_migration_moves_the_lock(cluster):
    c = cluster()
    a, b = c.hosts["a"], c.hosts["b"]
    res = create_here(a, "g")
    assert res.returncode == 0, res.stderr
    uuid = uuid_of(a, "g")
    assert c.owner(uuid) == "a"
    # The same config on B, and another config of the same name: refused, naming A.
    refused(b.xm("create", "--host", "b", str(a.root / "etc/xen/g"), check=False), "a", "g")
    refused(create_here(b, "g"), "a", "g")
    assert "g" not in b.domains() and b.qemu_pids() == []

    watch = c.ctl("watch", "-w", "json", "--prefix", f"cluster/owners/{uuid}", popen=True)
    # xm events on A shows the cluster's changes too (the lock arriving on B).
    events_out = open(a.root / "events.json", "w")
    follower = subprocess.Popen(["xm", "events", "--json"], env=a.env, stdout=events_out,
                                stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)           # etcdctl's watch is made (it prints nothing until an event)
        res = a.xm("migrate", "--live", "g", b.ip, check=False, timeout=600)
        assert res.returncode == 0, res.stderr
    finally:
        watch.send_signal(signal.SIGINT)
        out, _ = watch.communicate(timeout=10)
    events = []
    for line in out.splitlines():
        for ev in json.loads(line).get("Events") or []:
            if ev.get("type") == 1:     # DELETE (PUT, 0, is left out of the JSON)
                events.append(("DELETE", None))
            else:
                events.append(("PUT", json.loads(base64.b64decode(ev["kv"]["value"]))["host"]))
    assert events == [("PUT", "b")], out       # one step: never two owners, never none
    try:
        poll(lambda: any(e.get("event") == "cluster-owner" and e.get("host") == "b" and e.get("uuid") == uuid
                         for e in map(json.loads, (a.root / "events.json").read_text().splitlines())),
             timeout=10, what="xm events on A to show the lock moving to B")
    finally:
        follower.kill()
        follower.wait()
        events_out.close()
    assert c.owner(uuid) == "b"
    assert "g" not in a.domains() and a.qemu_pids() == []
    assert state(b, "g") in ("r-----", "-b----")
    assert c.ctl("get", f"domains/{uuid}/config", "--keys-only").stdout.strip(), \
        "the migration's source deleted the shared config"
    refused(create_here(a, "g"), "b", "g")
    # Destroyed on B: the lock goes, A may create it again.
    b.xm("destroy", "g")
    assert c.owner(uuid) is None
    assert create_here(a, "g").returncode == 0


def test_a_shared_disk_written_on_one_host_is_refused_on_another(cluster, tmp_path):
    c = cluster()
    a, b = c.hosts["a"], c.hosts["b"]
    shared = Path(tempfile.mkdtemp(prefix="pxshared", dir="/tmp")) / "data.img"
    shared.write_bytes(b"\0" * (4 << 20))
    try:
        assert create_here(a, "writer", disk=[f"file:{shared},xvdb,w"]).returncode == 0
        res = create_here(b, "other", disk=[f"file:{shared},xvdb,w"])
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
        assert f"disk file:{shared} (xvdb) is in use by domain writer on host a (read-write)" in res.stderr, \
            res.stderr
        assert "other" not in b.domains() and b.qemu_pids() == []
        # xm rename moves the name's lock: the new name is refused on B, the old one is free.
        a.xm("rename", "writer", "w2")
        refused(create_here(b, "w2"), "a", "w2")
        assert create_here(b, "writer").returncode == 0
        b.xm("destroy", "writer")
        a.xm("destroy", "w2")
        assert create_here(b, "other", disk=[f"file:{shared},xvdb,w"]).returncode == 0
    finally:
        shutil.rmtree(shared.parent, ignore_errors=True)


def test_kill_9_of_xend_keeps_the_lock_and_a_restart_takes_the_lease_back(cluster):
    c = cluster(ttl=8)
    a, b = c.hosts["a"], c.hosts["b"]
    assert create_here(a, "g").returncode == 0
    uuid = uuid_of(a, "g")
    qemu = a.qemu_pids()
    lease = (a.root / "var/run/pyxen/cluster-lease").read_text().strip()
    os.kill(int((a.root / "var/run/pyxen/xend.pid").read_text()), signal.SIGKILL)
    assert a.qemu_pids() == qemu                      # the guest runs on
    refused(create_here(b, "g"), "a", "g")                 # A's lease lives: B may not start it
    a.xend("start")
    assert (a.root / "var/run/pyxen/cluster-lease").read_text().strip() == lease
    assert c.owner(uuid) == "a" and state(a, "g") in ("r-----", "-b----")
    time.sleep(TTL + 4)     # past the old lease's TTL: the restarted xend keeps it alive
    assert c.owner(uuid) == "a"
    refused(create_here(b, "g"), "a", "g")


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_with_xend_dead_the_keeper_holds_the_lease_and_fences(cluster):
    c = cluster()
    a, b = c.hosts["a"], c.hosts["b"]
    assert create_here(a, "g").returncode == 0
    uuid = uuid_of(a, "g")
    [qemu] = a.qemu_pids()
    os.kill(int((a.root / "var/run/pyxen/xend.pid").read_text()), signal.SIGKILL)
    time.sleep(TTL + 3)     # past the lease's TTL: the keeper renews it while the guest runs
    assert c.owner(uuid) == "a" and proc_state(qemu) != "T"
    refused(create_here(b, "g"), "a", "g")
    # Cut off with no xend: the keeper stops QEMU (SIGSTOP) before the lease can end.
    t0 = time.monotonic()
    c.net.cut(a.ns, [m.ip for m in c.etcd.members])
    poll(lambda: proc_state(qemu) == "T", timeout=TTL, interval=0.2, what="the keeper to stop QEMU")
    assert time.monotonic() - t0 < TTL
    poll(lambda: c.owner(uuid) is None, timeout=TTL + 10, what="A's lease to end")
    c.net.heal(a.ns)
    # A new xend retakes the lock first, then lets QEMU continue and adopts it.
    a.xend("start")
    assert c.owner(uuid) == "a"
    assert proc_state(qemu) != "T" and a.qemu_pids() == [qemu]
    assert "g" in a.domains()
    refused(create_here(b, "g"), "a", "g")


def test_a_host_cut_off_from_etcd_pauses_before_its_lease_ends(cluster):
    c = cluster()
    a, b = c.hosts["a"], c.hosts["b"]
    assert create_here(a, "g").returncode == 0
    uuid = uuid_of(a, "g")
    poll(lambda: state(a, "g") in ("r-----", "-b----"), timeout=30, what="g running")
    t0 = time.monotonic()
    c.net.cut(a.ns, [m.ip for m in c.etcd.members])
    poll(lambda: "p" in state(a, "g"), timeout=TTL, interval=0.2, what="A to pause g before the TTL")
    paused_after = time.monotonic() - t0
    assert paused_after < TTL, paused_after
    assert "fencing this host" in xend_log(a)
    # Its user cannot run it meanwhile either.
    res = a.xm("unpause", "g", check=False)
    assert res.returncode != 0 and "paused by the cluster fence" in res.stderr, res.stderr
    # etcd ends A's lease (at least TTL after the last renewal): the lock goes.
    poll(lambda: c.owner(uuid) is None, timeout=TTL + 10, what="A's lock to expire")
    assert time.monotonic() - t0 >= TTL - 1
    c.net.heal(a.ns)
    # Nobody took it meanwhile: A takes the lock again and only then resumes.
    poll(lambda: c.owner(uuid) == "a", timeout=20, what="A to retake the lock")
    poll(lambda: "p" not in state(a, "g"), timeout=10, what="A to resume g")
    refused(create_here(b, "g"), "a", "g")


def test_etcd_with_one_member_dead_works_with_two_dead_creates_nothing_and_fences(cluster):
    # A longer lease than the other tests: a leader election after the first
    # kill (1 s and more on a loaded host) must not reach the fence margin.
    ttl = 10
    c = cluster(ttl=ttl)
    a, b = c.hosts["a"], c.hosts["b"]
    assert create_here(a, "g1").returncode == 0
    c.etcd.kill(c.etcd.members[0])
    # If that member led, the other two elect a new leader first (etcd's
    # election timeout, 1 s, longer on a loaded host); meanwhile a store call
    # gets one line ("etcd unreachable ...", no traceback), as a user would.
    # B's lock check answers again once its keep-alive went through.
    def answering():
        res = create_here(b, "g1")
        assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        return "domain g1 is running on host a" in res.stderr
    poll(answering, timeout=30, interval=0.5, what="the two live etcd members to answer B")
    res = create_here(b, "g2")
    assert res.returncode == 0, res.stderr
    assert "g1" in a.domains() and "g2" in b.domains()
    # A too is past the election (its keep-alive goes through again), so its
    # fence clock starts at most one keep-alive period (TTL/4) before the kill.
    def a_answering():
        res = create_here(a, "g2")
        assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        return "domain g2 is running on host b" in res.stderr
    poll(a_answering, timeout=30, interval=0.5, what="the two live etcd members to answer A")
    c.etcd.kill(c.etcd.members[1])
    t0 = time.monotonic()
    res = create_here(b, "g3")
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "etcd" in res.stderr, res.stderr
    assert "g3" not in b.domains()
    # The running guests run on until the fence margin, then pause.
    if time.monotonic() - t0 < ttl - MARGIN - ttl / 4 - 0.5:
        assert "p" not in state(a, "g1")
    poll(lambda: "p" in state(a, "g1") and "p" in state(b, "g2"), timeout=ttl + 5, interval=0.2,
         what="both hosts to fence")


def test_xend_refuses_to_start_when_etcd_does_not_answer(make_host, tmp_path):
    h = make_host("(accel tcg)\n(xend-cluster-etcd 'https://127.0.0.1:9 https://127.0.0.1:10')\n"
                  "(xend-cluster-name 'lonely')\n", start=False)
    ca = h.root / "etc/xen/pki"
    pki.make_ca(ca)
    pki.make_host_cert(ca, "lonely", out=ca)
    res = h.xend("start", check=False)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert ("cluster configured but etcd unreachable: https://127.0.0.1:9: Connection refused; "
            "https://127.0.0.1:10: Connection refused; xend not started") in res.stderr, res.stderr
    assert h.run("xend", "status").returncode != 0
