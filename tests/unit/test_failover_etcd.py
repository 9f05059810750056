"""Failover on a real etcd (one member, TLS) with the foundation's
membership leases and domain lock: a host's lease ends (revoked, as a dead
host's would expire), the two survivors scan concurrently, exactly one
claims and wins claimed -> starting, only it can take the lock, and the
host coming back finds its domain moved and cannot take the lock back."""

import threading
import time

import pytest

from pyxen import storekeys
from pyxen.cluster import failover as fo, view
from pyxen.cluster.lock import DomainLock, LockHeld
from pyxen.cluster.membership import Membership
from pyxen.config.domain import DomainConfig
from pyxen.testing.wait import poll

from test_failover import U1, U2, put_domain


def test_one_survivor_restarts_and_the_returning_host_cannot(etcd):
    stores = {n: etcd.store(n) for n in "abc"}
    stores["a"].delete_prefix("")
    free = {"a": 4096, "b": 1024, "c": 2048}
    members = {n: Membership(stores[n], n, ttl=5, info=lambda n=n: {"free_memory": free[n],
                                                                    "relocation": f"{n}:8002"})
               for n in "abc"}
    locks = {n: DomainLock(stores[n], members[n]) for n in "abc"}
    try:
        for m in members.values():
            m.join()
        put_domain(stores["a"], U1, "web", "a", "restart")
        put_domain(stores["a"], U2, "db", "a", "preserve")
        locks["a"].acquire(U1, "web")
        locks["a"].acquire(U2, "db")
        nodes = {n: fo.Failover(stores[n], n, lambda n=n: view.hosts(stores[n]), locks[n].owner, grace=1.0,
                             parse=DomainConfig.from_sxp)
                 for n in "bc"}
        # a is alive: nothing to do, however long one waits
        for _ in range(3):
            assert all(not [x for x in nd.scan() if x.what != "preserve"] for nd in nodes.values())
        members["a"].leave(revoke=True)          # a dies: its lease, record and locks are gone
        died = time.monotonic()
        starts: list = []
        stop = threading.Event()

        def survivor(n):
            while not stop.is_set():
                for act in nodes[n].scan():
                    # As xend does: only a claimed one is moved on (a start whose claim says
                    # starting is this host's own interrupted one; here none is interrupted).
                    if act.what == "start" and act.claim.state == "claimed" and \
                            fo.mark(stores[n], act.uuid, act.claim, "starting"):
                        starts.append((n, act.uuid, time.monotonic() - died))
                time.sleep(0.05)
        threads = [threading.Thread(target=survivor, args=(n,)) for n in "bc"]
        for t in threads:
            t.start()
        try:
            poll(lambda: starts, timeout=30, what="a survivor to restart web")
            time.sleep(2)                          # keep racing: no second start may appear
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert [(n, u) for n, u, _ in starts] == [("c", U1)]       # c has the most free memory; db preserved
        assert 1.0 <= starts[0][2] < 10
        assert stores["b"].get(storekeys.failover(U2)) is None
        locks["c"].acquire(U1, "web")
        with pytest.raises(LockHeld, match="running on host c"):
            locks["b"].acquire(U1, "web")
        # a comes back: its domain is owned elsewhere and it may not take it
        members["a"] = Membership(stores["a"], "a", ttl=5)
        members["a"].join()
        locks["a"] = DomainLock(stores["a"], members["a"])
        assert fo.superseded(stores["a"], "a", U1).target == "c"
        assert fo.superseded(stores["a"], "a", U2) is None
        with pytest.raises(LockHeld):
            locks["a"].acquire(U1, "web")
        locks["a"].acquire(U2, "db")               # the preserved one is still a's to resume
    finally:
        for m in members.values():
            m.leave(revoke=True)
        for s in stores.values():
            s.close()
