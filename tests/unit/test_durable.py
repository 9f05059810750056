"""The one persist-or-undo rule of domain operations (xend/durable.py), the
file store's deletes on a full disk, and SEDF's parameters kept as set."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from pyxen.config.domain import DomainConfig
from pyxen.filestore import FileStore
from pyxen.store import Put, StoreError
from pyxen.xend import durable
from pyxen.xend.resources import sedf_cap, sedf_record, sedf_view


class FakeDomain:
    name = "d"

    def __init__(self, fail: bool):
        self.cfg = DomainConfig.from_sxp("(vm (name d) (memory 128) (vcpus 2) (image (linux (kernel /k))))")
        self.paused = False
        self.sedf = {"period": 100.0}
        self.job = None
        self.fail = fail
        self.persisted = []

    def persist(self, config=False):
        if self.fail:
            raise StoreError("cannot write state x: no space left on /s")
        self.persisted.append((self.paused, self.cfg.memory, config))


def run(coro):
    return asyncio.run(coro)


def test_change_persists_after_the_act():
    dom = FakeDomain(fail=False)
    undone = []

    async def go():
        async with durable.change(dom, "mem-set", config=True) as ch:
            ch.undo(lambda: _note(undone, "balloon back"))
            dom.cfg.memory = 96
    run(go())
    assert dom.persisted == [(False, 96, True)] and undone == []


async def _note(seen, what):
    seen.append(what)


def test_change_undoes_act_and_memory_when_persisting_fails():
    dom = FakeDomain(fail=True)
    cfg = dom.cfg
    undone = []

    async def go():
        async with durable.change(dom, "pause") as ch:
            ch.undo(lambda: _note(undone, "first"))
            ch.undo(lambda: _note(undone, "second"))
            dom.paused = True
            dom.cfg.memory = 64
            dom.job = {"op": "x"}
    with pytest.raises(durable.StateNotSaved) as e:
        run(go())
    assert str(e.value) == "pause of domain d was not done: cannot write state x: no space left on /s"
    assert e.value.status == 507
    assert undone == ["second", "first"]                      # newest first
    assert (dom.paused, dom.cfg.memory, dom.job) == (False, 128, None)
    assert dom.cfg is cfg                                      # restored in place


def test_change_leaves_the_operations_own_failure_alone():
    dom = FakeDomain(fail=False)
    undone = []

    async def go():
        async with durable.change(dom, "vcpu-set") as ch:
            ch.undo(lambda: _note(undone, "x"))
            raise ValueError("guest said no")
    with pytest.raises(ValueError):
        run(go())
    assert dom.persisted == [] and undone == []


def test_a_failing_undo_is_logged_and_the_error_still_says_why(caplog):
    dom = FakeDomain(fail=True)

    async def bad():
        raise OSError("QEMU gone")

    async def go():
        async with durable.change(dom, "unpause") as ch:
            ch.undo(bad)
    with pytest.raises(durable.StateNotSaved):
        run(go())
    assert "cannot undo unpause" in caplog.text


def test_deletes_work_on_a_full_disk(tmp_path):
    """destroy must work on a full disk: a transaction of deletes only needs no space."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        st = FileStore(mnt / "state", host="h")
        st.txn([], [Put("domains/u/config", b"c"), Put("hosts/h/domains/u/runtime", b"r")])
        rev = st.read("domains/u/config").revision
        with open(mnt / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\1" * 4096)
            except OSError:
                pass
        with pytest.raises(StoreError, match="no space left on"):
            st.put("domains/v/config", b"x")
        from pyxen.store import Delete
        st.txn([], [Delete("hosts/h/domains/u/runtime"), Delete("domains/u/config")])
        assert st.keys("domains/") == [] and st.keys("hosts/") == []
        (mnt / "filler").unlink()
        st.put("domains/w/config", b"y")
        assert st.read("domains/w/config").revision > rev       # revisions still only go up
        st.close()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ------------------------------------------------------------------ SEDF
def test_sedf_parameters_print_back_as_set():
    set_ = {"period": 50.0, "slice": 25.0, "latency": 3.0, "extratime": 0}
    cap = sedf_cap(50.0, 25.0, 0)
    assert cap == 50
    assert sedf_view(set_, cap, 256) == {**set_, "weight": 256}
    # With extratime the slice is still what was set (Xen kept it), no cap.
    with_extra = {**set_, "extratime": 1}
    assert sedf_cap(50.0, 25.0, 1) == 0
    assert sedf_view(with_extra, 0, 256)["slice"] == 25.0


def test_sedf_view_follows_a_cap_set_elsewhere():
    # xm sched-credit -c 30 after sched-sedf: the record's slice no longer
    # gives the cap, so the view derives it (what the domain really gets).
    v = sedf_view({"period": 100.0, "slice": 25.0, "latency": 0.0, "extratime": 0}, 30, 256)
    assert (v["slice"], v["extratime"]) == (30.0, 0)
    # A record of before the slice was kept: derived from the cap as before.
    old = sedf_record({"period": 20.0, "latency": 1.0})
    assert sedf_view(old, 25, 256) == {"period": 20.0, "slice": 5.0, "latency": 1.0, "extratime": 0,
                                       "weight": 256}


def test_sedf_record_keeps_only_sane_numbers():
    assert sedf_record({"period": "x", "slice": True, "latency": 1e9, "extratime": 1, "evil": 3}) == \
        {"period": 100.0, "slice": 0.0, "latency": 0.0, "extratime": 1}
    assert sedf_record(None)["period"] == 100.0
