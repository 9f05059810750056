"""EtcdStore with no member answering: after one call found etcd down, the
next ones fail at once (one line, no network) until RETRY_DOWN has passed
or the keep-alive's probe gets through; an answer ends it."""

from __future__ import annotations

import socket

import pytest

from pyxen.etcdstore import EtcdStore, EtcdUnreachable


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()               # nothing listens there now: connection refused
    return port


@pytest.fixture
def store(monkeypatch):
    st = EtcdStore([f"http://127.0.0.1:{closed_port()}"], "h", timeout=0.5)
    tries = []
    real = st._call

    def counted(path, body, timeout):
        tries.append(path)
        return real(path, body, timeout)
    monkeypatch.setattr(st, "_call", counted)
    st.tries = tries
    return st


def test_calls_fail_fast_while_etcd_is_down_and_the_probe_still_tries(store, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("pyxen.etcdstore.time.monotonic", lambda: clock[0])
    with pytest.raises(EtcdUnreachable):
        store.call("kv/range", {"key": "eA=="})
    assert len(store.tries) == 1
    clock[0] += 0.2
    with pytest.raises(EtcdUnreachable, match="no member has answered for 0.2 s"):
        store.call("kv/range", {"key": "eA=="})
    assert len(store.tries) == 1                    # not tried: failed at once
    with pytest.raises(EtcdUnreachable):
        store.keepalive(1)                          # the probe always tries
    assert store.tries[-1] == "lease/keepalive"
    clock[0] += store.RETRY_DOWN + 0.1
    with pytest.raises(EtcdUnreachable):
        store.call("kv/range", {"key": "eA=="})     # long enough: tried again
    assert len(store.tries) == 3


def test_an_answer_ends_the_outage(store, monkeypatch):
    with pytest.raises(EtcdUnreachable):
        store.call("kv/range", {"key": "eA=="})
    monkeypatch.setattr(store, "_call", lambda path, body, timeout: {"ok": True})
    assert store.call("lease/keepalive", {}, probe=True) == {"ok": True}
    assert store.call("kv/range", {"key": "eA=="}) == {"ok": True}
