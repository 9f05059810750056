"""The state store: atomic writes, keys, corrupt records set aside."""

import os

import pytest

from pyxen.store import FileStore, StoreError


def test_put_get_keys_delete(tmp_path):
    st = FileStore(tmp_path / "s")
    st.put("domains/u1/config", b"(vm)")
    st.put_json("domains/u1/runtime", {"domid": 1})
    st.put_json("host/next-domid", 2)
    assert st.get("domains/u1/config") == b"(vm)"
    assert st.get_json("domains/u1/runtime") == {"domid": 1}
    assert st.keys("domains/") == ["domains/u1/config", "domains/u1/runtime"]
    st.delete("domains/u1/config")
    st.delete("domains/u1/runtime")
    assert not (tmp_path / "s/domains/u1").exists()
    assert st.get("domains/u1/config") is None
    # no temp files left behind
    assert [f for f in os.listdir(tmp_path / "s/host") if f.startswith(".")] == []


def test_bad_keys(tmp_path):
    st = FileStore(tmp_path)
    for k in ("", "../x", "a//b", ".hidden", "a/./b"):
        with pytest.raises(StoreError):
            st.put(k, b"x")


def test_corrupt_json_is_quarantined(tmp_path):
    st = FileStore(tmp_path)
    st.put("host/x", b"{not json")
    assert st.get_json("host/x", "dflt") == "dflt"
    assert st.get("host/x") is None
    assert len(list((tmp_path / ".corrupt").iterdir())) == 1
