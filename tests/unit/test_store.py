"""The state store: revisions, compare-and-swap, all-or-none transactions
(also across a crash), two writing processes, the upgrade of the first
layout, a full disk, checkout/checkin of another program's files."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyxen import storekeys
from pyxen.filestore import FileStore
from pyxen.store import Compare, Delete, Put, StoreConflict, StoreError

ROOT = Path(__file__).resolve().parents[2]


def child(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run *code* in a fresh Python (its own store object, its own flock)."""
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=e, capture_output=True,
                          text=True, timeout=120)


def test_put_get_keys_delete(tmp_path):
    st = FileStore(tmp_path / "s", host="h1")
    st.put("domains/u1/config", b"(vm)")
    st.put_json("hosts/h1/domains/u1/runtime", {"domid": 1})
    assert st.get("domains/u1/config") == b"(vm)"
    assert st.get_json("hosts/h1/domains/u1/runtime") == {"domid": 1}
    assert st.keys("domains/") == ["domains/u1/config"]
    assert st.keys("hosts/h1/") == ["hosts/h1/domains/u1/runtime"]
    st.delete("domains/u1/config")
    assert not (tmp_path / "s/domains").exists()        # empty directories go too
    assert st.get("domains/u1/config") is None
    # no temp files or journal left behind
    assert sorted(f for f in os.listdir(tmp_path / "s") if f.startswith(".")) == \
        [".host", ".layout", ".lock", ".revision"]


def test_revisions_rise_and_absent_is_zero(tmp_path):
    st = FileStore(tmp_path)
    assert st.read("a/b") is None and st.revision("a/b") == 0
    r1 = st.put("a/b", b"1")
    r2 = st.put("a/c", b"2")
    assert 0 < r1 < r2
    assert st.read("a/b").revision == r1 and st.read("a/b").value == b"1"
    st.delete("a/b")
    r3 = st.put("a/b", b"again")
    assert r3 > r2 and st.revision("a/b") == r3       # a recreated key never reuses a revision
    # The counter survives reopening.
    assert FileStore(tmp_path).put("a/d", b"") > r3


def test_cas_wins_and_loses(tmp_path):
    st = FileStore(tmp_path)
    r = st.cas("k/x", 0, b"first")                     # 0: only if absent
    with pytest.raises(StoreConflict) as e:
        st.cas("k/x", 0, b"second")
    assert e.value.key == "k/x" and e.value.actual == r and "changed under us" in str(e.value)
    with pytest.raises(StoreConflict):
        st.cas("k/x", r - 1, b"stale")
    assert st.get("k/x") == b"first"
    r2 = st.cas("k/x", r, b"second")
    assert st.get("k/x") == b"second" and r2 > r


def test_txn_all_or_none(tmp_path):
    st = FileStore(tmp_path)
    st.put("a", b"old-a")
    ra = st.revision("a")
    with pytest.raises(StoreConflict):
        st.txn([Compare("a", ra), Compare("b", 5)], [Put("a", b"new-a"), Put("c", b"new-c"), Delete("a")])
    assert st.get("a") == b"old-a" and st.get("c") is None and st.revision("a") == ra
    rev = st.txn([Compare("a", ra), Compare("b", 0)], [Put("b", b"B"), Put("c", b"C"), Delete("a")])
    assert st.keys() == ["b", "c"] and st.revision("b") == st.revision("c") == rev
    with pytest.raises(StoreError):
        st.txn([], [Put("ok", b"x"), Put("../escape", b"x")])
    assert st.get("ok") is None


def test_bad_keys(tmp_path):
    st = FileStore(tmp_path)
    for k in ("", "../x", "a//b", ".hidden", "a/./b", "a/"):
        with pytest.raises(StoreError):
            st.put(k, b"x")


def test_corrupt_json_is_quarantined(tmp_path):
    st = FileStore(tmp_path)
    st.put("x/y", b"{not json")
    assert st.get_json("x/y", "dflt") == "dflt"
    assert st.get("x/y") is None
    assert len(list((tmp_path / ".corrupt").iterdir())) == 1


def test_crash_between_journal_and_apply_is_finished_by_the_next_opener(tmp_path):
    st = FileStore(tmp_path)
    st.put("d/u/config", b"old-config")
    res = child(f"""
        from pyxen.filestore import FileStore
        from pyxen.store import Put, Delete
        st = FileStore({str(tmp_path)!r})
        st.txn([], [Put("d/u/config", b"new-config"), Put("h/u/runtime", b"rt"), Delete("gone")])
        print("not reached")
        """, env={"PYXEN_FAULTS": "store-journaled"})
    assert res.returncode == -9 and "not reached" not in res.stdout, res.stderr
    assert (tmp_path / ".journal").exists()
    # Nothing applied yet on disk, but a read-only opener already sees the
    # transaction whole (the journal is the commit point) ...
    ro = FileStore(tmp_path, read_only=True)
    assert ro.get("d/u/config") == b"new-config" and ro.get("h/u/runtime") == b"rt"
    assert ro.keys("h/") == ["h/u/runtime"]
    with pytest.raises(StoreError, match="read-only"):
        ro.put("x", b"")
    # ... and the first writer to take the lock finishes it.
    st2 = FileStore(tmp_path)
    assert st2.get("d/u/config") == b"new-config" and st2.get("h/u/runtime") == b"rt"
    assert st2.revision("d/u/config") == st2.revision("h/u/runtime")
    assert not (tmp_path / ".journal").exists()
    assert not [p for p in tmp_path.rglob("*.txn.tmp")]


def test_crash_before_the_journal_changes_nothing(tmp_path, monkeypatch):
    st = FileStore(tmp_path)
    st.put("a", b"old")
    real = FileStore._stage
    calls = []

    def dying(self, rel, data):
        calls.append(rel)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return real(self, rel, data)
    monkeypatch.setattr(FileStore, "_stage", dying)
    with pytest.raises(StoreError, match="Input/output error"):
        st.txn([], [Put("a", b"new"), Put("b", b"new")])
    monkeypatch.undo()
    assert st.get("a") == b"old" and st.get("b") is None
    assert not [p for p in tmp_path.rglob("*.txn.tmp")]


def test_two_processes_incrementing_by_cas_lose_no_update(tmp_path):
    FileStore(tmp_path).put_json("n", 0)
    code = f"""
        from pyxen.filestore import FileStore
        st = FileStore({str(tmp_path)!r})
        for _ in range(150):
            st.update_json("n", lambda v: v + 1)
        """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert FileStore(tmp_path).get_json("n") == 300


def test_full_disk_is_a_clean_error_and_keeps_the_old_value(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    st = None
    try:
        st = FileStore(mnt / "state")
        st.put("domains/u/config", b"(vm keep)")
        with open(mnt / "filler", "wb") as f:
            try:
                f.write(b"\0" * (256 << 10))
            except OSError:
                pass
        with pytest.raises(StoreError) as e:
            st.txn([], [Put("domains/u/config", b"x" * 8192), Put("other", b"y" * 8192)])
        assert str(e.value) == f"cannot write state domains/u/config: no space left on {mnt / 'state'}"
        assert st.get("domains/u/config") == b"(vm keep)" and st.get("other") is None
        assert not [p for p in (mnt / "state").rglob("*.txn.tmp")]
    finally:
        if st is not None:
            st.close()          # its lock file keeps the mount busy
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def write_v1(root: Path) -> None:
    """A store as the first layout wrote it: raw values, host/ at the top,
    runtime records beside configs, vTPM state as a directory."""
    files = {"host/next-domid": b"7", "host/accel-probe": b'{"verdict": "tcg"}',
             "host/pci-assignable/0000-00-1f.2": b'{"driver": "e1000e"}',
             "domains/u1/config": b"(vm (name one))", "domains/u1/runtime": b'{"domid": 3}',
             "vnets/1": b"(vnet (id 1))", "nvram/u1": b"\x00VARS",
             ".dirs/vtpm/instance-1/tpm2-00.permall": b"TPMSTATE", ".dirs/vtpm/instance-1/.lock": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_first_layout_is_upgraded_once_atomically(tmp_path):
    write_v1(tmp_path)
    with pytest.raises(StoreError, match="first layout"):
        FileStore(tmp_path, read_only=True)
    st = FileStore(tmp_path, host="hostA")
    assert st.get_json(storekeys.next_domid("hostA")) == 7
    assert st.get_json(storekeys.accel_probe("hostA")) == {"verdict": "tcg"}
    assert st.get_json(storekeys.pci_assignable("hostA", "0000:00:1f.2")) == {"driver": "e1000e"}
    assert st.get(storekeys.config("u1")) == b"(vm (name one))"
    assert st.get_json(storekeys.runtime("hostA", "u1")) == {"domid": 3}
    assert st.get(storekeys.nvram("u1")) == b"\x00VARS"
    assert st.keys(storekeys.vtpm(instance=1) + "/") == ["vtpm/instance-1/tpm2-00.permall"]
    assert not (tmp_path / ".dirs").exists() and not (tmp_path / "host").exists()
    assert st.get("domains/u1/runtime") is None
    revs = {st.revision(k) for k in st.keys()}
    assert len(revs) == 1 and revs != {0}              # one transaction
    # Opening again changes nothing; the host name stays the recorded one.
    again = FileStore(tmp_path, host="renamed")
    assert again.host == "hostA" and {again.revision(k) for k in again.keys()} == revs


def test_upgrade_interrupted_is_finished(tmp_path):
    write_v1(tmp_path)
    res = child(f"""
        from pyxen.filestore import FileStore
        FileStore({str(tmp_path)!r}, host="hostA")
        """, env={"PYXEN_FAULTS": "store-journaled"})
    assert res.returncode == -9, res.stderr
    st = FileStore(tmp_path, host="hostA")
    assert st.get_json(storekeys.runtime("hostA", "u1")) == {"domid": 3}
    assert st.get("vtpm/instance-1/tpm2-00.permall") == b"TPMSTATE"
    assert not (tmp_path / ".dirs").exists() and (tmp_path / ".layout").read_text() == "2\n"


def test_checkout_checkin(tmp_path):
    st = FileStore(tmp_path / "s")
    work = tmp_path / "work"
    st.checkout("vtpm/name-x", work)                    # nothing stored yet: an empty dir
    assert work.is_dir() and list(work.iterdir()) == [] and (work.stat().st_mode & 0o777) == 0o700
    (work / "tpm2-00.permall").write_bytes(b"perm")
    (work / "sub").mkdir()
    (work / "sub/vol").write_bytes(b"v")
    (work / ".lock").write_bytes(b"")                   # a lock file is not state
    st.checkin("vtpm/name-x", work)
    assert st.keys("vtpm/") == ["vtpm/name-x/sub/vol", "vtpm/name-x/tpm2-00.permall"]
    rev = st.revision("vtpm/name-x/tpm2-00.permall")
    (work / "sub/vol").unlink()
    st.checkin("vtpm/name-x", work)                     # a file gone is deleted, unchanged kept
    assert st.keys("vtpm/") == ["vtpm/name-x/tpm2-00.permall"]
    assert st.revision("vtpm/name-x/tpm2-00.permall") == rev
    other = tmp_path / "other"
    (other / "stale").parent.mkdir()
    (other / "stale").write_bytes(b"old")
    st.checkout("vtpm/name-x", other)
    assert sorted(p.name for p in other.iterdir()) == ["tpm2-00.permall"]
    assert (other / "tpm2-00.permall").read_bytes() == b"perm"


def test_update_json_starts_from_default_and_replaces_corrupt(tmp_path):
    st = FileStore(tmp_path)
    assert st.update_json("n", lambda v: v + 1, default=1) == 2
    st.put("n", b"{bad")
    assert st.update_json("n", lambda v: v + 1, default=10) == 11
    assert json.loads(st.get("n")) == 11


def test_keys_module_separates_host_and_shared():
    assert storekeys.next_domid("h").startswith(storekeys.host_prefix("h"))
    assert storekeys.runtime("h", "u") == "hosts/h/domains/u/runtime"
    assert storekeys.uuid_of_runtime("h", storekeys.runtime("h", "u")) == "u"
    assert storekeys.uuid_of_runtime("h", storekeys.runtime("other", "u")) is None
    assert storekeys.uuid_of_config(storekeys.config("u")) == "u"
    for shared in (storekeys.config("u"), storekeys.vnet("3"), storekeys.nvram("u"), storekeys.vtpm(name="d")):
        assert not shared.startswith("hosts/")


def test_a_host_that_upgrades_keeps_its_domains(tmp_path, monkeypatch):
    """xend on a store of the first layout: the domain is there after the
    upgrade, and its next write lands in the new keys."""
    import asyncio

    from pyxen.config import sxp
    from pyxen.config.domain import DomainConfig
    from pyxen.config.xendconfig import XendConfig
    from pyxen.paths import Paths
    from pyxen.xend.domains import Domains
    from pyxen.xend.network import HostNetwork

    monkeypatch.setenv("PYXEN_ROOT", str(tmp_path))
    paths = Paths(tmp_path)
    for d in paths.layout():
        d.mkdir(parents=True, exist_ok=True)
    cfg = DomainConfig.from_values({"name": "kept", "kernel": "/k", "memory": 64})
    old = paths.state / "domains" / cfg.uuid
    old.mkdir(parents=True)
    (old / "config").write_text(sxp.to_string(cfg.to_sxp()))
    (old / "runtime").write_text(json.dumps({"domid": 4, "state": "shutdown", "pid": None}))
    (paths.state / "host").mkdir()
    (paths.state / "host/next-domid").write_text("9")

    st = FileStore(paths.state, host="h")
    xc = XendConfig()
    doms = Domains(paths, xc, st, None, HostNetwork(paths, xc, st))
    asyncio.run(doms.adopt_all())
    [dom] = doms.by_uuid.values()
    assert (dom.name, dom.domid, dom.state) == ("kept", 4, "shutdown")
    assert st.get_json(storekeys.next_domid("h")) == 9
    dom.persist(config=True)
    assert st.revision(storekeys.config(cfg.uuid)) == st.revision(storekeys.runtime("h", cfg.uuid))
    dom.forget()
    assert st.keys("domains/") == [] and st.keys(storekeys.runtime_prefix("h")) == []
