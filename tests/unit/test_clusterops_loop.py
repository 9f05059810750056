"""xend's cluster loop without QEMU: a restart this host won is carried out
once through Domains.create (a second tick does not start it again), a
refused create marks the claim failed, and this host's listing is published."""

import asyncio
import json
from types import SimpleNamespace

from pyxen import storekeys
from pyxen.filestore import FileStore
from pyxen.xend.clusterops import ClusterOps
from pyxen.xend.errors import Conflict

from test_failover import U1, put_domain


class FakeDomains:
    def __init__(self, fail=None):
        self.created, self.events, self.fail = [], [], fail

    def all(self):
        return []

    async def create(self, config):
        if self.fail:
            raise Conflict(self.fail)
        self.created.append(config)
        return SimpleNamespace(name="web")

    def emit(self, kind, dom, **extra):
        self.events.append((kind, extra))


def setup(tmp_path, fail=None):
    st = FileStore(tmp_path / "s", host="shared")
    for name, free, up in (("a", 4096, False), ("b", 2048, True), ("c", 1024, True)):
        rec = json.dumps({"name": name, "free_memory": free, "relocation": f"{name}:8002"}).encode()
        st.put(storekeys.known_host(name), rec)
        if up:
            st.put(storekeys.member(name), rec)
    put_domain(st, U1, "web", "a", "restart")
    cluster = SimpleNamespace(store=st, name="b", lock=SimpleNamespace(owner=lambda u: None))
    doms = FakeDomains(fail)
    return st, doms, ClusterOps(doms, cluster, grace=0.0)


def test_restart_once_and_listing_published(tmp_path):
    st, doms, ops = setup(tmp_path)
    acts = asyncio.run(ops.tick())
    assert [a.what for a in acts] == ["start"]
    assert len(doms.created) == 1 and "(name web)" in doms.created[0]
    assert doms.events == [("restarted", {"reason": "host a failed"})]
    assert st.get_json(storekeys.failover(U1))["state"] == "started"
    asyncio.run(ops.tick())
    asyncio.run(ops.tick())
    assert len(doms.created) == 1
    assert [r["name"] for r in st.get_json(storekeys.listing("b"))] == ["Domain-0"]


def test_refused_create_marks_the_claim_failed(tmp_path):
    st, doms, ops = setup(tmp_path, fail="domain web is owned by host a")
    asyncio.run(ops.tick())
    claim = st.get_json(storekeys.failover(U1))
    assert claim["state"] == "failed" and claim["reason"] == "domain web is owned by host a"
    asyncio.run(ops.tick())
    assert st.get_json(storekeys.failover(U1))["state"] == "failed"      # no retry loop
