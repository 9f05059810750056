"""Evacuation plans (memory accounted as domains are placed, refusals with
reasons) and the cluster view (hosts up and lost, lease age, every host's
listing with its Host) on a FileStore."""

import json

from pyxen import storekeys
from pyxen.cluster import evacuate, view
from pyxen.cluster.placement import HostInfo, Needs
from pyxen.filestore import FileStore


def test_plan_accounts_memory_and_refuses_with_reasons():
    hs = [HostInfo("a", free_memory=100), HostInfo("b", free_memory=1000), HostInfo("c", free_memory=700),
          HostInfo("d", state="maintenance", free_memory=9000)]
    doms = [evacuate.Candidate("small", Needs(100, name="small")),
            evacuate.Candidate("big", Needs(600, name="big")),
            evacuate.Candidate("mid", Needs(500, name="mid")),
            evacuate.Candidate("pci", Needs(10, name="pci"), blocker="it has PCI devices passed through"),
            evacuate.Candidate("huge", Needs(5000, name="huge"))]
    p = evacuate.plan(hs, "a", doms)
    # big first onto b (1000 free), then mid onto c (700 > 400 left on b), small onto b (400 left)
    assert p.moves == [("big", "b"), ("mid", "c"), ("small", "b")]
    assert p.refused["pci"] == "it has PCI devices passed through"
    # huge, the largest, is tried first, against the full pool
    assert p.refused["huge"] == ("no host can run domain huge: b: 1000 MiB free, needs 5000 MiB; "
                                 "c: 700 MiB free, needs 5000 MiB; d: host is in maintenance "
                                 "(xm host-maintenance NAME off ends it)")
    assert "big -> b" in p.summary() and "pci: stays (it has PCI" in p.summary()


def member(st, name, lost=False, **kw):
    """A member record as pyxen.cluster.membership publishes it (FileStore has no
    leases: the live record is a plain key here)."""
    rec = json.dumps(dict(name=name, **kw)).encode()
    st.put(storekeys.known_host(name), rec)
    if not lost:
        st.put(storekeys.member(name), rec)


def test_hosts_up_lost_and_relocation_address(tmp_path):
    st = FileStore(tmp_path / "s", host="a")
    member(st, "a", address="10.0.0.1", relocation="10.0.0.1:8002", free_memory=900, vcpus=2, domains=1,
           bridges=["xenbr0"])
    member(st, "b", address="10.0.0.2", relocation="[fd00::2]:8102", free_memory=300)
    member(st, "c", lost=True, address="10.0.0.3", free_memory=5000)
    hs = view.hosts(st)
    assert [(h.name, h.state, h.free_memory) for h in hs] == [("a", "up", 900), ("b", "up", 300),
                                                             ("c", "lost", 5000)]
    a = view.resolve(st, "a")
    assert (a.address, a.port, a.bridges, a.vcpus, a.domains) == ("10.0.0.1", 8002, frozenset({"xenbr0"}), 2, 1)
    assert (view.resolve(st, "b").address, view.resolve(st, "b").port) == ("fd00::2", 8102)
    assert (view.resolve(st, "c").address, view.resolve(st, "c").port) == ("10.0.0.3", 0)
    assert view.resolve(st, "zz") is None


def test_listing_published_on_change_and_merged(tmp_path):
    st = FileStore(tmp_path / "s", host="a")
    for n in "abc":
        member(st, n)
    rows_b = [{"name": "Domain-0", "domid": 0, "memory": 512, "vcpus": 2, "state": "r-----", "cpu_time": 3.4},
              {"name": "web", "domid": 4, "memory": 64, "vcpus": 1, "state": "-b----", "cpu_time": 10.6,
               "extra": "not published"}]
    pub = view.ListingPublisher(st, "b", every=10)
    assert pub.publish(rows_b, now=0)
    rev = st.revision(storekeys.listing("b"))
    assert not pub.publish(rows_b, now=1)
    assert st.revision(storekeys.listing("b")) == rev          # unchanged rows are not rewritten
    assert "extra" not in st.get_json(storekeys.listing("b"))[1]
    busy = [dict(r, cpu_time=r["cpu_time"] + 1) for r in rows_b]
    assert not pub.publish(busy, now=5)                        # CPU time alone: at most every 10 s
    assert pub.publish(busy, now=10.5)
    paused = [dict(busy[0]), dict(busy[1], state="--p---")]
    assert pub.publish(paused, now=11)                         # anything else: at once
    local = [{"name": "Domain-0", "domid": 0, "memory": 256, "vcpus": 1, "state": "r-----", "cpu_time": 1.0}]
    out = view.cluster_domains(st, "a", local)
    assert [(d["host"], d["name"]) for d in out] == [("a", "Domain-0"), ("b", "Domain-0"), ("b", "web")]
    assert out[2]["cpu_time"] == 11.6 and out[2]["state"] == "--p---"
