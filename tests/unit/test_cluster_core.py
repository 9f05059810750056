"""Membership, the domain lock and the fencer against a real etcd (one
member on 127.0.0.1 with TLS, started here); the fencer's clock is a fake
one so its deadlines are tested exactly, without waiting for them."""

import asyncio

import pytest

from pyxen import storekeys as K
from pyxen.cluster import ClusterError
from pyxen.cluster.fence import Fencer
from pyxen.cluster.lock import DomainLock, LockHeld
from pyxen.cluster.membership import Membership
from pyxen.store import StoreConflict
from pyxen.testing.wait import poll

U1 = "11111111-1111-1111-1111-111111111111"
U2 = "22222222-2222-2222-2222-222222222222"


@pytest.fixture
def hosts(etcd):
    """Two joined hosts, A and B, on a store emptied first."""
    made = []

    def make(name, ttl=4, **kw):
        st = etcd.store(name)
        m = Membership(st, name, ttl, info=lambda: {"address": f"10.0.0.{len(made) + 1}", "free_memory": 512,
                                                     "vcpus": 2, "domains": 0, "bridges": ["xenbr0"]}, **kw)
        m.join()
        made.append(m)
        return m, DomainLock(st, m)
    etcd.store("wipe").delete_prefix("")
    yield make
    for m in made:
        m.leave()


def test_hosts_are_listed_up_then_lost(hosts):
    a, _ = hosts("A")
    b, _ = hosts("B")
    listed = {h.name: h for h in a.hosts()}
    assert set(listed) == {"A", "B"} and all(h.state == "up" for h in listed.values())
    assert listed["B"].free_mem == 512 and listed["B"].bridges == ("xenbr0",) and listed["B"].lease == b.lease
    assert listed["A"].lease_age is not None and 0 <= listed["A"].lease_age < 4
    b.leave(revoke=True)
    listed = {h.name: h for h in a.hosts()}
    assert listed["B"].state == "lost" and listed["B"].address == "10.0.0.2"


def test_a_second_xend_cannot_take_a_live_hosts_name(hosts, etcd):
    hosts("A")
    dup = Membership(etcd.store("A"), "A", 4)
    with pytest.raises(ClusterError, match="host name A is already in the cluster"):
        dup.join()


def test_a_restarted_xend_takes_its_lease_back(hosts, etcd):
    a, lock = hosts("A")
    lock.acquire(U1, "web")
    a.leave(revoke=False)       # xend stops (or dies) with the domain running
    again, lock2 = hosts("A", previous_lease=a.lease)
    assert again.lease == a.lease and lock2.holds(U1)


def test_lock_is_exclusive_by_uuid_and_by_name(hosts):
    _, la = hosts("A")
    _, lb = hosts("B")
    tok = la.acquire(U1, "web")
    assert la.acquire(U1, "web") == tok     # re-taking one's own lock changes nothing
    with pytest.raises(LockHeld, match="domain web is running on host A"):
        lb.acquire(U1, "web")
    with pytest.raises(LockHeld, match="domain web is running on host A"):
        lb.acquire(U2, "web")               # another uuid, the same name
    assert lb.owner(U1) == "A" and lb.owner_of_name("web") == (U1, "A")
    lb.release(U1)                          # not B's: left alone
    assert la.owner(U1) == "A"
    la.release(U1)
    assert la.owner(U1) is None and la.owner_of_name("web") is None
    lb.acquire(U2, "web")


def test_a_lock_goes_with_its_hosts_lease(hosts):
    a, la = hosts("A")
    _, lb = hosts("B")
    la.acquire(U1, "web")
    a.leave(revoke=True)
    assert lb.owner(U1) is None
    lb.acquire(U1, "web")


def test_handover_moves_the_lock_in_one_step_and_only_once(hosts, etcd):
    _, la = hosts("A")
    b, lb = hosts("B")
    tok = la.acquire(U1, "web")
    seen = []
    w = etcd.store("watcher").watch(K.OWNERS_PREFIX, seen.append)
    try:
        compares, ops = la.handover_ops(U1, "B", tok)
        la.store.txn(compares, ops)
        assert lb.holds(U1) and lb.owner_of_name("web") == (U1, "B")
        # A second commit with the old token cannot move it again.
        with pytest.raises(StoreConflict):
            la.store.txn(compares, ops)
        poll(lambda: seen, timeout=5, what="the owner key's change")
        # One put that names B, never a delete in between: no instant without an owner or with two.
        assert [(e.kind, b'"host": "B"' in e.value) for e in seen] == [("put", True)]
    finally:
        w.cancel()
    with pytest.raises(ClusterError, match="does not own"):
        la.handover_ops(U1, "A", tok)
    assert b.lease


def test_membership_events(hosts, etcd):
    a, _ = hosts("A")
    events = []
    w = a.watch(events.append)
    try:
        b, lb = hosts("B")
        lb.acquire(U1, "web")
        b.leave(revoke=True)
        poll(lambda: any(e.kind == "host-lost" for e in events), timeout=5, what="host-lost")
        kinds = [(e.kind, e.host) for e in events]
        assert ("host-up", "B") in kinds and ("owner", "B") in kinds
        assert ("owner-released", "B") in kinds and ("host-lost", "B") in kinds
    finally:
        w.cancel()


class FakeMembership:
    def __init__(self, ttl=6):
        self.ttl, self.lease, self.this_host = ttl, 1, "A"
        self.since = 0.0

    def since_renewal(self):
        return self.since


class FakeLock:
    def __init__(self):
        self.taken_elsewhere = set()

    def acquire(self, uuid, name):
        if uuid in self.taken_elsewhere:
            raise LockHeld(name, "B", uuid)
        return 1


def test_fencer_pauses_before_the_ttl_and_resumes_only_what_it_holds():
    m, lock = FakeMembership(ttl=6), FakeLock()
    calls = []

    async def fence(mode, reason):
        calls.append(("fence", mode, reason))
        return [U1, U2]

    async def resume(uuid):
        calls.append(("resume", uuid))

    f = Fencer(m, lock, "pause", margin=2, fence=fence, resume=resume)

    async def go():
        m.since = 3.9
        await f.step()
        assert not calls                      # 3.9 s < TTL 6 - margin 2
        m.since = 4.1
        await f.step()
        assert calls[0][:2] == ("fence", "pause") and "no etcd keep-alive for 4.1 s" in calls[0][2]
        await f.step()
        assert len(calls) == 1                # fenced once, not on every step
        lock.taken_elsewhere.add(U2)          # restarted on B meanwhile
        m.since = 0.5
        await f.step()
        assert calls[1:] == [("resume", U1)] and not f.fenced and f.paused == []
    asyncio.run(go())


def test_fencer_settings_are_checked():
    with pytest.raises(ValueError, match="pause, destroy"):
        Fencer(FakeMembership(), FakeLock(), "reboot")
    with pytest.raises(ValueError, match="margin"):
        Fencer(FakeMembership(ttl=5), FakeLock(), "pause", margin=5)


def test_disk_claims_follow_xens_rule_across_hosts(hosts):
    from pyxen.cluster import claims
    a, la = hosts("A")
    b, lb = hosts("B")
    disk = ("file:/shared/web.img (xvda)", {"path:/shared/web.img"})
    claims.claim(la.store, "A", a.lease, U1, "web", [(*disk, False)])
    with pytest.raises(claims.DiskClaimed, match="in use by domain web on host A .read-write."):
        claims.claim(lb.store, "B", b.lease, U2, "db", [(*disk, False)])
    with pytest.raises(claims.DiskClaimed):
        claims.claim(lb.store, "B", b.lease, U2, "db", [(*disk, True)])   # read-only beside a writer
    # The same domain on B (a migration's target) may hold it beside A.
    claims.claim(lb.store, "B", b.lease, U1, "web", [(*disk, False)])
    claims.release(la.store, "A", U1)
    claims.release(lb.store, "B", U1)
    ro = ("file:/shared/iso (hdc)", {"path:/shared/iso"})
    claims.claim(la.store, "A", a.lease, U1, "web", [(*ro, True)])
    claims.claim(lb.store, "B", b.lease, U2, "db", [(*ro, True)])        # read-only sharing is fine
    with pytest.raises(claims.DiskClaimed, match="read-only"):
        claims.claim(lb.store, "B", b.lease, "33333333-3333-3333-3333-333333333333", "x", [(*ro, False)])
    b.leave(revoke=True)                                                  # claims go with the lease
    claims.claim(la.store, "A", a.lease, "33333333-3333-3333-3333-333333333333", "x", [(*disk, False)])


def test_rename_moves_the_name_lock(hosts):
    _, la = hosts("A")
    _, lb = hosts("B")
    la.acquire(U1, "web")
    lb.acquire(U2, "db")
    with pytest.raises(LockHeld, match="domain db is running on host B"):
        la.rename(U1, "db")
    la.rename(U1, "www")
    assert la.owner_of_name("www") == (U1, "A") and la.owner_of_name("web") is None
    lb.acquire("33333333-3333-3333-3333-333333333333", "web")     # the old name is free again


def test_fence_destroys_restart_domains_and_pauses_the_others():
    """xend's fence actions on stand-in domains (real processes as QEMUs)."""
    import subprocess
    from types import SimpleNamespace
    from pyxen.xend.clusterfence import FenceActions

    class Mon:
        def __init__(self):
            self.stopped = False

        async def stop(self):
            self.stopped = True

    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        doms = [SimpleNamespace(uuid=U1, name="keep", pid=procs[0].pid, paused=False, monitor=Mon(),
                                cfg=SimpleNamespace(on_host_failure="preserve"), persist_quietly=lambda: None),
                SimpleNamespace(uuid=U2, name="moves", pid=procs[1].pid, paused=False, monitor=Mon(),
                                cfg=SimpleNamespace(on_host_failure="restart"), persist_quietly=lambda: None)]
        for d in doms:
            async def release():
                return None
            d.release, d.gone, d.forget = release, asyncio.Event(), lambda: None
        removed = []
        node = FenceActions()
        node.domains = SimpleNamespace(all=lambda: doms, by_uuid={d.uuid: d for d in doms},
                                       remove=removed.append, emit=lambda *a, **k: None)
        node.name, node.state, node._was_paused, node._unforgotten = "A", "up", set(), {}
        done = asyncio.run(node._fence("pause", "test"))
        assert done == [U1] and doms[0].paused and doms[0].monitor.stopped
        assert procs[1].wait(timeout=5) == -9 and procs[0].poll() is None   # killed / left alone
        assert removed == [doms[1]] and node._unforgotten == {}           # forgotten, records deleted
    finally:
        for p in procs:
            p.kill()
            p.wait()
