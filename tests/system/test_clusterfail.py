"""A host fenced in the middle of a live migration (issue 18), source or
target: real TCG
guest, two xends in namespaces on a three-member etcd (test_cluster.py's
fixture, lease TTL 5 s, fence margin 2 s).

The source, A, is held at the end of the stream (fault point
``migrate-source-streamed`` with a stall, pyxen/faults.py) while the test
cuts it off etcd, so the commit transaction that would hand the lock to B
cannot reach etcd: the migration must fail with one line, B must never own
or run the guest (an etcdctl watch on the owner key from outside sees no
put naming B), A must fence it (pause: it is a 'preserve' domain) and,
once healed, retake its lock and resume it — one copy, on A, throughout.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time

from pyxen.testing.wait import poll

from test_cluster import TTL, _leftovers, cluster, create_here, state, uuid_of, xend_log  # noqa: F401

STALL = 4.0     # > the fence deadline (TTL - margin = 3 s): A is overdue when the commit comes


def owners(out: str) -> list[tuple[str, str | None]]:
    seen = []
    for line in out.splitlines():
        for ev in json.loads(line).get("Events") or []:
            if ev.get("type") == 1:
                seen.append(("DELETE", None))
            else:
                seen.append(("PUT", json.loads(base64.b64decode(ev["kv"]["value"]))["host"]))
    return seen


def test_source_cut_off_etcd_mid_migration_keeps_the_guest_and_never_hands_the_lock(cluster):
    c = cluster(env={"a": {"PYXEN_FAULTS": f"migrate-source-streamed:stall={STALL}"}})
    a, b = c.hosts["a"], c.hosts["b"]
    assert create_here(a, "g").returncode == 0
    uuid = uuid_of(a, "g")
    poll(lambda: state(a, "g") in ("r-----", "-b----"), timeout=60, what="g running on A")
    watch = c.ctl("watch", "-w", "json", "--prefix", f"cluster/owners/{uuid}", popen=True)
    mig = subprocess.Popen(["xm", "migrate", "--live", "g", b.ip], env=a.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: "fault: stalling at migrate-source-streamed" in xend_log(a), timeout=120, interval=0.1,
             what="A's migration to reach the end of its stream")
        c.net.cut(a.ns, [m.ip for m in c.etcd.members])
        out, err = mig.communicate(timeout=120)
        assert mig.returncode != 0, out
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        # B's incoming QEMU is gone once it is told (or finds) the migration failed.
        poll(lambda: "g" not in b.domains() and b.qemu_pids() == [], timeout=30, what="B to drop the incoming g")
        # A fences the guest it kept (a preserve domain: paused, not destroyed).
        try:
            poll(lambda: "g" in a.domains() and "p" in state(a, "g"), timeout=TTL + 10, interval=0.2,
                 what="A to fence g")
        except AssertionError as e:
            said = [ln for ln in xend_log(a).splitlines() if "DEBUG" not in ln and "  " not in ln[:4]]
            open("/tmp/cf/mig.log", "w").write("\n".join(said))
            said = [ln for ln in said if "fenc" in ln or "migrat" in ln or "g:" in ln][-40:]
            raise AssertionError(f"{e}; A has {a.domains()}; migrate said {err.strip()!r}\n" + "\n".join(said))
        c.net.heal(a.ns)
        poll(lambda: state(a, "g") in ("r-----", "-b----"), timeout=30, what="A to resume g")
        assert c.owner(uuid) == "a"
        assert "g" not in b.domains() and b.qemu_pids() == []
    finally:
        if mig.poll() is None:
            mig.kill()
            mig.wait()
        c.net.heal(a.ns)
        watch.send_signal(signal.SIGINT)
        wout, _ = watch.communicate(timeout=10)
    assert ("PUT", "b") not in owners(wout), wout


def running_on(c, name) -> list[str]:
    out = []
    for h in c.hosts.values():
        row = h.domains().get(name)             # one xm list per host: a domain may go meanwhile
        if row is not None and row["state"] in ("r-----", "-b----"):
            out.append(h.name)
    return out


def test_target_cut_off_etcd_mid_migration_never_runs_two_copies(cluster):
    """The target, B, loses etcd while A is held at the end of the stream.
    A still reaches etcd and commits (the lock goes to B's lease), but B,
    fenced, cannot take the guest: it drops its copy.  A then cannot know
    whether B runs it, so it keeps its copy paused and says so in one line
    (the uncertain end of a migration).  The guest never runs on both hosts;
    B, back, does not take back the lock of the copy it dropped, so the
    operator's ``xm unpause`` on A (what the message asks) runs it there."""
    c = cluster(env={"a": {"PYXEN_FAULTS": f"migrate-source-streamed:stall={STALL}"}})
    a, b = c.hosts["a"], c.hosts["b"]
    assert create_here(a, "g").returncode == 0
    uuid = uuid_of(a, "g")
    poll(lambda: state(a, "g") in ("r-----", "-b----"), timeout=60, what="g running on A")
    mig = subprocess.Popen(["xm", "migrate", "--live", "g", b.ip], env=a.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    both = []
    try:
        poll(lambda: "fault: stalling at migrate-source-streamed" in xend_log(a), timeout=120, interval=0.1,
             what="A's migration to reach the end of its stream")
        c.net.cut(b.ns, [m.ip for m in c.etcd.members])
        while mig.poll() is None:
            if len(running_on(c, "g")) > 1:
                both.append(time.monotonic())
            time.sleep(0.2)
        out, err = mig.communicate()
        assert mig.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        if "did not confirm" in err:
            assert "g is kept paused here" in err, err
        poll(lambda: "g" not in b.domains(), timeout=30, what="B to drop its copy")
        # B stays cut off past its lease: watch for two running copies meanwhile.
        deadline = time.monotonic() + TTL + 2
        while time.monotonic() < deadline:
            if len(running_on(c, "g")) > 1:
                both.append(time.monotonic())
            time.sleep(0.2)
        c.net.heal(b.ns)
        poll(lambda: "b" in {ln.split()[0] for ln in a.xm("host-list").stdout.splitlines()[1:]
                             if ln.split()[2] == "up"}, timeout=30, what="B to rejoin")
        if running_on(c, "g") == []:
            res = a.xm("unpause", "g", check=False)
            assert res.returncode == 0, res.stderr
        where = poll(lambda: running_on(c, "g"), timeout=30, what="g to run again")
        assert where == ["a"], where
        poll(lambda: c.owner(uuid) == "a", timeout=30, what="the lock to be A's")
        assert "g" not in b.domains()
    finally:
        if mig.poll() is None:
            mig.kill()
            mig.wait()
        c.net.heal(b.ns)
    assert not both, "g ran on both hosts"
