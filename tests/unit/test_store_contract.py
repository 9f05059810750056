"""One set of store tests, run against both backends: FileStore and
EtcdStore (a one-member etcd on 127.0.0.1 with TLS, started here in under
a second).  What pyxen.store promises must hold on either; what only a
cluster store has (leases, watches, several endpoints) is tested below."""

import threading
import time

import pytest

from pyxen.filestore import FileStore
from pyxen.store import Compare, Delete, NotClustered, Put, StoreConflict, StoreError
from pyxen.testing.wait import poll


@pytest.fixture(params=["file", "etcd"])
def store(request, tmp_path):
    if request.param == "file":
        s = FileStore(tmp_path / "state", host="h1")
        yield s
        s.close()
        return
    c = request.getfixturevalue("etcd")
    s = c.store("h1")
    s.delete_prefix("")      # every test starts from an empty store
    yield s
    s.close()


def test_put_get_keys_delete(store):
    assert store.get("a/b") is None and store.revision("a/b") == 0
    store.put("a/b", b"1")
    store.put("a/c/d", b"2")
    store.put("b", b"3")
    assert store.get("a/b") == b"1"
    assert store.keys("a/") == ["a/b", "a/c/d"]
    assert store.keys() == ["a/b", "a/c/d", "b"]
    assert {k: e.value for k, e in store.read_prefix("a/").items()} == {"a/b": b"1", "a/c/d": b"2"}
    store.delete("a/b")
    assert store.get("a/b") is None
    store.delete_prefix("a/")
    assert store.keys() == ["b"]


def test_revisions_rise_and_cas(store):
    r1 = store.put("k", b"1")
    r2 = store.put("k", b"2")
    assert r2 > r1 and store.revision("k") == r2 == store.read("k").revision
    with pytest.raises(StoreConflict) as e:
        store.cas("k", r1, b"x")
    assert e.value.actual == r2 and store.get("k") == b"2"
    assert store.cas("k", r2, b"3") > r2
    with pytest.raises(StoreConflict):
        store.cas("new", 5, b"x")
    store.cas("new", 0, b"created")     # 0: create only if absent
    with pytest.raises(StoreConflict):
        store.cas("new", 0, b"again")


def test_txn_all_or_none_and_later_ops_win(store):
    store.put("x", b"1")
    rx = store.revision("x")
    with pytest.raises(StoreConflict):
        store.txn([Compare("x", rx), Compare("y", 99)], [Put("x", b"2"), Put("z", b"3")])
    assert store.get("x") == b"1" and store.get("z") is None
    store.txn([Compare("x", rx), Compare("y", 0)], [Put("x", b"2"), Delete("x"), Put("x", b"4"), Put("y", b"5")])
    assert store.get("x") == b"4" and store.get("y") == b"5"


def test_bad_keys_are_refused(store):
    for k in ("", "/a", "a//b", "a/./b", "../x", "a/.hidden"):
        with pytest.raises(StoreError):
            store.put(k, b"v")


def test_update_json_from_threads_loses_nothing(store):
    def bump():
        for _ in range(10):
            store.update_json("counter", lambda v: v + 1, default=0)
    ts = [threading.Thread(target=bump) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert store.get_json("counter") == 30


def test_corrupt_json_is_quarantined(store):
    store.put("bad", b"{not json")
    assert store.get_json("bad", default="d") == "d"
    assert store.get("bad") is None
    assert store.quarantined()


def test_checkout_checkin(store, tmp_path):
    store.put("vtpm/x/a", b"A")
    store.put("vtpm/x/sub/b", b"B")
    d = tmp_path / "co"
    store.checkout("vtpm/x", d)
    assert (d / "a").read_bytes() == b"A" and (d / "sub" / "b").read_bytes() == b"B"
    (d / "a").write_bytes(b"A2")
    (d / "sub" / "b").unlink()
    (d / "c").write_bytes(b"C")
    store.checkin("vtpm/x", d)
    assert store.keys("vtpm/x/") == ["vtpm/x/a", "vtpm/x/c"] and store.get("vtpm/x/a") == b"A2"


# ----------------------------------------------------- a local store's refusal
def test_file_store_refuses_leases_and_watches(tmp_path):
    s = FileStore(tmp_path / "state", host="h1")
    assert not s.clustered
    for call in (lambda: s.grant_lease(5), lambda: s.watch("a/", print),
                 lambda: s.txn([], [Put("a", b"1", lease=7)])):
        with pytest.raises(NotClustered, match="xend-cluster-etcd"):
            call()
    assert s.get("a") is None


# ---------------------------------------------------------- etcd's additions
def test_keys_on_a_lease_vanish_with_it(etcd):
    s = etcd.store("h1")
    lease = s.grant_lease(5)
    s.txn([Compare("owned", 0)], [Put("owned", b"me", lease=lease)])
    assert s.keepalive(lease) == 5
    granted, left = s.lease_remaining(lease)
    assert granted == 5 and 0 < left <= 5
    s.revoke_lease(lease)
    assert s.get("owned") is None and s.keepalive(lease) == 0 and s.lease_remaining(lease) == (0, 0)


def test_a_lease_not_renewed_expires(etcd):
    s = etcd.store("h1")
    lease = s.grant_lease(2)
    s.txn([], [Put("short", b"x", lease=lease)])
    poll(lambda: s.get("short") is None, timeout=10, what="the 2 s lease to expire")


def test_watch_sees_every_change_in_order(etcd):
    s = etcd.store("h1")
    s.delete_prefix("")
    seen = []
    w = s.watch("w/", seen.append)
    try:
        s.put("w/a", b"1")
        s.put("other", b"not watched")
        s.txn([], [Put("w/b", b"2"), Delete("w/a")])
        poll(lambda: len(seen) >= 3, timeout=10, what="three watch events")
        assert [(e.kind, e.key, e.value) for e in seen] == [
            ("put", "w/a", b"1"), ("put", "w/b", b"2"), ("delete", "w/a", b"1")]
        assert seen[0].revision < seen[1].revision == seen[2].revision
    finally:
        w.cancel()
    s.put("w/c", b"after cancel")
    time.sleep(0.3)     # nothing may arrive; a short wait is all there is to test that
    assert len(seen) == 3


def test_watch_from_a_past_revision_replays(etcd):
    s = etcd.store("h1")
    r = s.put("r/x", b"1")
    s.put("r/x", b"2")
    seen = []
    w = s.watch("r/", seen.append, start_revision=r)
    try:
        poll(lambda: len(seen) >= 2, timeout=10, what="replayed events")
        assert [e.value for e in seen[:2]] == [b"1", b"2"]
    finally:
        w.cancel()


def test_a_dead_endpoint_is_skipped(etcd, tmp_path):
    from pyxen.etcdstore import EtcdStore
    ca, cert, key = etcd.client_cert("h2", tmp_path / "c")
    # The first endpoint refuses connections; the store moves on to the live one.
    s = EtcdStore(["https://127.0.0.1:1", *etcd.endpoints], "h2", ca, cert, key, timeout=2)
    s.put("failover", b"ok")
    assert s.get("failover") == b"ok"


def test_nothing_answering_is_one_clear_error(etcd, tmp_path):
    from pyxen.etcdstore import EtcdStore, EtcdUnreachable
    ca, cert, key = etcd.client_cert("h3", tmp_path / "c")
    s = EtcdStore(["https://127.0.0.1:1"], "h3", ca, cert, key, timeout=1)
    with pytest.raises(EtcdUnreachable, match=r"etcd unreachable: https://127.0.0.1:1: Connection refused"):
        s.get("x")


def test_a_client_without_the_pools_certificate_is_refused(etcd, tmp_path):
    from pyxen import pki
    from pyxen.etcdstore import EtcdStore
    other = tmp_path / "other-ca"
    pki.make_ca(other, "a stranger's CA")
    pki.make_host_cert(other, "intruder", out=other)
    s = EtcdStore(etcd.endpoints, "intruder", etcd.ca, str(other / pki.HOST_CERT), str(other / pki.HOST_KEY),
                  timeout=2)
    with pytest.raises(StoreError):
        s.get("x")


def test_endpoint_parsing():
    from pyxen.etcdstore import parse_endpoints
    assert parse_endpoints("https://10.0.0.1:2379  https://10.0.0.2:2379") == [
        "https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    for bad in ("", "10.0.0.1:2379", "https://h:port", "ftp://h:1", "https://h:1/path"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)
