"""The snapshot tree's rules (pyxen/xend/snaptree.py), without QEMU."""

from __future__ import annotations

import pytest

from pyxen.xend import snaptree as t


def _add(doc, name, when):
    return t.add(doc, name, {"id": f"id-{name}", "created": when}, "web")


def test_create_chains_from_current_and_revert_branches():
    doc = _add(t.empty(), "s1", 1)
    doc = _add(doc, "s2", 2)
    assert doc["snapshots"]["s1"]["parent"] is None and doc["snapshots"]["s2"]["parent"] == "s1"
    doc = t.revert(doc, "s1", "web")
    doc = _add(doc, "s3", 3)
    assert doc["snapshots"]["s3"]["parent"] == "s1" and doc["current"] == "s3"
    assert t.children(doc, "s1") == ["s2", "s3"]
    assert t.ordered(doc) == ["s1", "s2", "s3"]


def test_delete_in_the_middle_reparents_children_and_current():
    doc = _add(_add(t.empty(), "s1", 1), "s2", 2)
    doc = _add(t.revert(doc, "s1", "web"), "s3", 3)
    doc = t.revert(doc, "s1", "web")
    out = t.delete(doc, "s1", "web")
    assert "s1" not in out["snapshots"]
    assert out["snapshots"]["s2"]["parent"] is None and out["snapshots"]["s3"]["parent"] is None
    assert out["current"] is None
    assert "s1" in doc["snapshots"]                  # the input is not changed
    deep = t.delete(_add(_add(_add(t.empty(), "a", 1), "b", 2), "c", 3), "b", "web")
    assert deep["snapshots"]["c"]["parent"] == "a" and deep["current"] == "c"
    assert t.ordered(deep) == ["a", "c"] and t.ids(deep) == {"id-a", "id-c"}


def test_refusals_are_one_line_and_typed():
    doc = _add(t.empty(), "s1", 1)
    with pytest.raises(t.TreeError) as e:
        _add(doc, "s1", 2)
    assert e.value.kind == "exists" and str(e.value) == "Domain web already has a snapshot named 's1'"
    with pytest.raises(t.TreeError) as e:
        t.revert(doc, "nope", "web")
    assert e.value.kind == "unknown" and "no snapshot named 'nope'" in str(e.value)
    with pytest.raises(t.TreeError) as e:
        t.delete(doc, "nope", "web")
    assert e.value.kind == "unknown"
    for bad in ("", "-x", "a/b", "a b", "x" * 65, "../up", None):
        with pytest.raises(t.TreeError) as e:
            t.check_name(bad)
        assert e.value.kind == "name" and "\n" not in str(e.value)


def test_a_stored_document_that_is_not_ours_reads_as_empty():
    assert t.normalise(None) == t.empty()
    assert t.normalise({"snapshots": []}) == t.empty()
    doc = t.normalise({"snapshots": {"a": {"parent": None}}, "current": "gone"})
    assert doc["current"] is None and list(doc["snapshots"]) == ["a"]
