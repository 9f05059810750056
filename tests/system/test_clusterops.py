"""The cluster's operations end to end: three xends in network namespaces
on a three-member etcd (the foundation's fixture, tests/system/test_cluster.py),
real TCG guests.

* host-list and list --cluster with three hosts; placement picks the host
  with the most free memory and, from a host that is not it, names it;
  --host honoured and checked; migrate by host name; host-evacuate moves
  every domain away.
* host failure: A cut off from etcd by nftables in its namespace -> exactly
  one of B and C restarts the on_host_failure='restart' domain, once; the
  'preserve' one is not restarted; A, healed, destroys its superseded copy
  and does not resume it, and resumes the preserved one.

Not here yet: the guest on a shared disk writing its host name every 100 ms.
Written (branch clusterops-wip-writer), it shows the restart refused by
QEMU's image lock, still held by A's fenced (paused) QEMU: a restart domain
must be destroyed, not paused, when its host fences (NEEDS-FROM-CLUSTER.md).
"""

from __future__ import annotations

import json
import time

from pyxen.testing.wait import poll

from test_cluster import TTL, _leftovers, cluster, create, state, uuid_of  # noqa: F401  (fixtures)


def rows(h, *args) -> dict:
    out = h.xm("list", "--cluster", *args).stdout.splitlines()
    assert out[0].split() == ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)", "Host"]
    return {(r.split()[6], r.split()[0]): r.split() for r in out[1:]}


def hosts(h) -> dict:
    out = h.xm("host-list").stdout.splitlines()
    assert out[0].split() == ["Name", "Address", "State", "Free(MiB)", "VCPUs", "Domains", "Lease(s)"]
    return {r.split()[0]: r.split() for r in out[1:]}


def running(h, name) -> bool:
    return name in h.domains() and state(h, name) in ("r-----", "-b----")


def test_host_list_placement_list_cluster_migrate_by_name_and_evacuate(cluster):
    c = cluster(names=("a", "b", "c"))
    a, b, cc = (c.hosts[n] for n in "abc")
    hs = hosts(a)
    assert set(hs) == {"a", "b", "c"} and {r[2] for r in hs.values()} == {"up"}
    assert hs["b"][1] == f"{b.ip}:8002"
    # --host: this host, checked by placement
    res = a.xm("create", str(a.config("g1")), "--host", "a", check=False)
    assert res.returncode == 0, res.stderr
    res = a.xm("create", str(a.config("big", memory=10 ** 6)), "--host", "b", check=False)
    assert res.returncode == 1 and res.stderr.strip().startswith("Error: no host can run domain big: b: ")
    # automatic: A now has less free memory than B and C (same machine otherwise): B wins the tie on name
    poll(lambda: int(hosts(a)["a"][3]) < int(hosts(a)["b"][3]), timeout=10, what="A's record to show g1")
    res = create(a, "g2")
    assert res.returncode == 1 and "domain g2 is placed on host b" in res.stderr, res.stderr
    assert "g2" not in a.domains()
    assert b.xm("create", str(a.root / "etc/xen/g2"), check=False).returncode == 0
    # list --cluster from C: every host's domains with their host (listings published once a second)
    poll(lambda: {("a", "g1"), ("b", "g2"), ("a", "Domain-0"), ("c", "Domain-0")} <= set(rows(cc)),
         timeout=15, what="C to list A's and B's domains")
    assert "g1" not in cc.domains()                          # plain xm list is C's own
    # migrate by host name
    poll(lambda: running(a, "g1"), timeout=60, what="g1 running")
    res = a.xm("migrate", "--live", "g1", "c", check=False, timeout=600)
    assert res.returncode == 0, res.stderr
    assert running(cc, "g1") and "g1" not in a.domains()
    # evacuate C: g1 goes to the host with the most free memory that is not C (A: it has nothing now)
    res = cc.xm("host-evacuate", "c", check=False, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "Domain g1 migrated to a"
    assert [n for n in cc.domains() if n != "Domain-0"] == []
    assert running(a, "g1")
    res = a.xm("host-evacuate", "c", check=False)
    assert res.returncode == 1 and "run it on c itself (this host is a)" in res.stderr


def test_host_failure_restarts_exactly_once_and_the_returning_host_does_not_resume(cluster):
    c = cluster(names=("a", "b", "c"))
    a, b, cc = (c.hosts[n] for n in "abc")
    assert a.xm("create", str(a.config("r", on_host_failure="restart")), "--host", "a",
                check=False).returncode == 0
    assert a.xm("create", str(a.config("p")), "--host", "a", check=False).returncode == 0
    ur = uuid_of(a, "r")
    poll(lambda: running(a, "r") and running(a, "p"), timeout=60, what="r and p running")
    t0 = time.monotonic()
    c.net.cut(a.ns, [m.ip for m in c.etcd.members])
    # The fence pauses p (preserve) and destroys r (restart: another host
    # starts it, and a paused QEMU would keep its images locked).
    poll(lambda: "r" not in a.domains() and "p" in state(a, "p"), timeout=TTL, interval=0.2,
         what="A to fence its guests")

    def restarted():
        return [h.name for h in (b, cc) if "r" in h.domains()]
    poll(restarted, timeout=TTL + 30, interval=0.2, what="B or C to restart r")
    took = time.monotonic() - t0
    where = restarted()
    assert len(where) == 1, where
    winner = c.hosts[where[0]]
    poll(lambda: running(winner, "r"), timeout=60, what="r running on its new host")
    assert c.owner(ur) == winner.name
    claim = c.get(f"cluster/failover/{ur}")
    assert claim["source"] == "a" and claim["target"] == winner.name and claim["state"] == "started"
    time.sleep(5)                      # keep watching: no second restart, p never restarted
    assert restarted() == where and all("p" not in h.domains() for h in (b, cc))
    # A comes back: r is owned elsewhere -> destroyed here, never resumed; p is A's again
    c.net.heal(a.ns)
    poll(lambda: "r" not in a.domains(), timeout=30, what="A to drop its superseded copy of r")
    poll(lambda: running(a, "p"), timeout=30, what="A to resume p")
    assert running(winner, "r") and c.owner(ur) == winner.name
    assert took < TTL + 20, took
    print(json.dumps({"cut_to_restart_s": round(took, 1), "restarted_on": winner.name}))
