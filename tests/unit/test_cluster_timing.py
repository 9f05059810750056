"""What makes a host failure quick without making it unsafe
(docs/cluster.md, "Host-failure time"):

* a renewal counts from when it was *sent* (etcd reset the TTL after
  that), so the fence lands before the lease can expire even when etcd
  answers slowly;
* a failed keep-alive is retried at once, not an interval later;
* the failover scan runs when the watch says a lock is gone and again the
  moment the grace delay ends, not on a once-a-second poll;
* a host whose fence only killed restart domains is ``up`` again once its
  keep-alives work (it had nothing to resume)."""

import asyncio
import threading
import time

from pyxen.cluster.fence import Fencer
from pyxen.cluster.membership import Membership
from pyxen.store import StoreError
from pyxen.xend.clusterops import ClusterOps

from test_cluster_core import FakeLock, FakeMembership
from test_clusterops_loop import setup
from test_failover import U1


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class SlowStore:
    """Answers every keep-alive 1.5 s (of the fake clock) after it was sent;
    the first *fail* ones fail."""

    def __init__(self, clock, fail=0):
        self.clock, self.fail = clock, fail
        self.stop_after = (10 ** 9, threading.Event())
        self.calls: list[tuple[float, float, float]] = []     # (fake clock at send, real time, timeout)

    def read_with_lease(self, key):
        return None

    def grant_lease(self, ttl):
        return 7

    def txn(self, compares, ops):
        return 1

    def keepalive(self, lease, timeout=None):
        self.calls.append((self.clock.t, time.monotonic(), timeout))
        n, stop = self.stop_after
        if len(self.calls) >= n:
            stop.set()
        if self.fail:
            self.fail -= 1
            raise StoreError("etcd: timed out")
        self.clock.t += 1.5
        return 8


def test_a_renewal_counts_from_when_it_was_sent_and_a_failed_one_is_retried_at_once():
    clock = Clock()
    st = SlowStore(clock, fail=2)
    m = Membership(st, "a", ttl=2, clock=clock)     # every 0.5 s, each call given that (at most the interval)
    st.stop_after = (4, m._stop)
    m.join()
    assert m.last_ok == 1000.0
    m._thread.join(10)
    assert len(st.calls) == 4
    # Calls 3 and 4 succeeded, each answered 1.5 s (fake) after it was sent:
    # the lease is judged from the last send, not from the answer.
    assert st.calls[3][0] == 1001.5 and clock.t == 1003.0
    assert m.last_ok == 1001.5
    gaps = [b[1] - a[1] for a, b in zip(st.calls, st.calls[1:3])]
    assert all(g < 0.45 for g in gaps), gaps            # retried after RETRY, not every (0.5 s)
    assert st.calls[0][2] == 0.5


def test_the_scan_runs_on_a_kick_and_when_the_grace_ends_not_on_the_poll(tmp_path, monkeypatch):
    st, doms, ops = setup(tmp_path)
    ops.failover.grace = 0.5
    monkeypatch.setattr(ClusterOps, "POLL", 60.0)     # no poll would come within this test

    async def go():
        task = asyncio.create_task(ops.run())
        await asyncio.sleep(0.2)
        assert doms.created == []
        t0 = time.monotonic()
        ops.kick()                                     # the watch: a lock went
        while not doms.created and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.02)
        took = time.monotonic() - t0
        task.cancel()
        return took
    took = asyncio.run(go())
    assert len(doms.created) == 1
    assert 0.5 <= took < 2.0, took                     # the grace, then at once


def test_next_due_is_the_end_of_the_earliest_grace(tmp_path):
    st, doms, ops = setup(tmp_path)
    clock = Clock()
    fo = ops.failover
    fo.grace, fo.clock = 2.0, clock
    assert fo.next_due() is None
    assert [a.what for a in fo.scan()] == ["wait"]
    assert fo.next_due() == 1002.0
    clock.t = 1002.5
    assert fo.next_due() is None                       # past: the next scan starts it


def test_a_fence_that_only_killed_is_over_once_the_keepalives_work():
    m, events = FakeMembership(ttl=6), []

    async def fence(mode, reason):
        return []                                      # every domain was a restart one: killed

    f = Fencer(m, FakeLock(), "pause", margin=2, fence=fence, on_event=lambda k, d: events.append(k))

    async def go():
        m.since = 4.5
        await f.step()
        m.since = 0.2
        await f.step()
    asyncio.run(go())
    assert events == ["fenced", "recovered"] and not f.fenced


def test_keeper_retries_a_failed_keepalive_soon(tmp_path, monkeypatch):
    """The keeper (no xend running) renews from the send time as well, and
    after a failure tries again within a tick, not a whole interval on."""
    from pyxen.paths import Paths
    from pyxen.xend import keeper

    paths = Paths(tmp_path)
    paths.run.mkdir(parents=True)
    calls = []

    class Store:
        def keepalive(self, lease, timeout=None):
            calls.append(time.monotonic())
            if len(calls) < 3:
                raise StoreError("etcd: timed out")
            raise SystemExit        # enough: end the keeper's loop here

        def revoke_lease(self, lease):
            pass
    monkeypatch.setattr(keeper, "xend_alive", lambda pid: False)
    monkeypatch.setattr(keeper, "qemu_pids", lambda p: [12345])
    done = threading.Event()

    def go():
        try:
            keeper.run(paths, Store(), 7, 8, 3.0, 0)
        except SystemExit:
            pass
        finally:
            done.set()
    threading.Thread(target=go, daemon=True).start()
    assert done.wait(15)
    assert len(calls) == 3
    assert calls[2] - calls[1] < 1.0, calls            # TTL 8: the interval would be 2 s


def test_the_watchdog_kills_restart_domains_when_the_fence_is_due_and_nothing_else():
    """kill_overdue runs from a thread (so a blocked loop cannot delay it):
    at TTL - margin without a keep-alive the QEMUs another host may restart
    are SIGKILLed, marked as expected exits (not a crash to restart here);
    a preserve domain is left to the loop's fencer, which pauses it."""
    import subprocess
    from types import SimpleNamespace
    from pyxen.xend.clusterfence import kill_overdue

    procs = {n: subprocess.Popen(["sleep", "60"]) for n in ("r", "p")}
    try:
        doms = [SimpleNamespace(name=n, pid=pr.pid, expect_exit=False,
                                cfg=SimpleNamespace(on_host_failure="restart" if n == "r" else "preserve"))
                for n, pr in procs.items()]
        domains = SimpleNamespace(all=lambda: doms)
        m = FakeMembership(ttl=8)
        m.since = 4.9
        assert kill_overdue(domains, m, 5.0, "pause") == []
        m.since = 5.1
        assert kill_overdue(domains, m, 5.0, "pause") == ["r"]
        assert procs["r"].wait(5) == -9 and doms[0].expect_exit
        assert procs["p"].poll() is None and not doms[1].expect_exit
        assert kill_overdue(domains, m, 5.0, "pause") == []           # once
        assert kill_overdue(domains, m, 5.0, "destroy") == ["p"]       # destroy: all of them
        assert procs["p"].wait(5) == -9
    finally:
        for pr in procs.values():
            pr.kill()
            pr.wait()


def test_a_domain_gone_while_fenced_does_not_get_its_lock_back():
    """An arriving migration that failed while this host was fenced is
    destroyed here; on recovery its lock must not be retaken (it would
    strand the copy the source kept)."""
    m, lock, taken = FakeMembership(ttl=6), FakeLock(), []
    lock.acquire = lambda uuid, name: taken.append(uuid)
    here = {"u1", "u2"}

    async def fence(mode, reason):
        return ["u1", "u2"]

    f = Fencer(m, lock, "pause", margin=2, fence=fence, present=lambda u: u in here)

    async def go():
        m.since = 4.5
        await f.step()
        here.discard("u2")
        m.since = 0.2
        await f.step()
    asyncio.run(go())
    assert taken == ["u1"] and not f.fenced


def test_a_restart_interrupted_by_etcd_is_carried_out_later(tmp_path):
    """etcd away for a moment during a restart (seen in the 20-failure
    bench: a slow fdatasync): the create's lock cannot be taken, nothing is
    decided, the claim stays ``starting`` and the next scan starts it; a
    claim left ``starting`` with the domain running here is recorded
    ``started``, not started twice."""
    from pyxen import storekeys
    from pyxen.xend.errors import Unavailable
    st, doms, ops = setup(tmp_path)
    real = doms.create
    calls = []

    async def flaky(config):
        calls.append(config)
        if len(calls) == 1:
            raise Unavailable("cluster: cannot take the lock of domain web: etcd unreachable")
        return await real(config)
    doms.create = flaky
    asyncio.run(ops.tick())
    assert st.get_json(storekeys.failover(U1))["state"] == "starting" and doms.created == []
    acts = asyncio.run(ops.tick())
    assert [a.what for a in acts] == ["start"] and len(doms.created) == 1
    assert st.get_json(storekeys.failover(U1))["state"] == "started"
    # A claim left "starting" (etcd lost the "started" write) with the domain here:
    from pyxen.cluster import failover as fo
    c = fo.read_claim(st, U1)
    st.put_json(storekeys.failover(U1), dict(c.record(), state="starting"))
    ops.failover.here = lambda uuid: True
    acts = asyncio.run(ops.tick())
    assert [a.what for a in acts] == ["started"] and len(doms.created) == 1
    assert st.get_json(storekeys.failover(U1))["state"] == "started"
