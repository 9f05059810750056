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
                                 "c: 700 MiB free, needs 5000 MiB; d: host is maintenance")
    assert "big -> b" in p.summary() and "pci: stays (it has PCI" in p.summary()


def member(st, prefix, name, **kw):
    st.put(prefix + name, json.dumps(dict(name=name, **kw)).encode())


def test_hosts_up_lost_and_lease_age(tmp_path):
    st = FileStore(tmp_path / "s", host="a")
    member(st, view.MEMBERS_PREFIX, "a", address="10.0.0.1", relocation_port=8002, free_memory=900, vcpus=2,
           domains=1, bridges=["xenbr0"], renewed=1000.0)
    member(st, view.MEMBERS_PREFIX, "b", address="10.0.0.2", free_memory=300, state="maintenance",
           renewed=998.5)
    member(st, view.KNOWN_PREFIX, "b", address="10.0.0.2")
    member(st, view.KNOWN_PREFIX, "c", address="10.0.0.3", free_memory=5000)
    hs = view.hosts(st, now=1001.0)
    assert [(h.name, h.state, h.lease_age) for h in hs] == [("a", "up", 1.0), ("b", "maintenance", 2.5),
                                                           ("c", "lost", None)]
    a = view.resolve(st, "a")
    assert (a.address, a.port, a.bridges) == ("10.0.0.1", 8002, frozenset({"xenbr0"}))
    assert view.resolve(st, "zz") is None


def test_listing_published_on_change_and_merged(tmp_path):
    st = FileStore(tmp_path / "s", host="a")
    for n in "abc":
        member(st, view.MEMBERS_PREFIX, n)
    rows_b = [{"name": "Domain-0", "domid": 0, "memory": 512, "vcpus": 2, "state": "r-----", "cpu_time": 3.4},
              {"name": "web", "domid": 4, "memory": 64, "vcpus": 1, "state": "-b----", "cpu_time": 10.6,
               "extra": "not published"}]
    last = view.publish_listing(st, "b", rows_b)
    rev = st.revision(storekeys.listing("b"))
    assert view.publish_listing(st, "b", rows_b, last) == last
    assert st.revision(storekeys.listing("b")) == rev          # unchanged rows are not rewritten
    assert "extra" not in st.get_json(storekeys.listing("b"))[1]
    local = [{"name": "Domain-0", "domid": 0, "memory": 256, "vcpus": 1, "state": "r-----", "cpu_time": 1.0}]
    out = view.cluster_domains(st, "a", local)
    assert [(d["host"], d["name"]) for d in out] == [("a", "Domain-0"), ("b", "Domain-0"), ("b", "web")]
    assert out[2]["cpu_time"] == 11
