"""The snapshot tree of one domain as plain data: names, parents, the
snapshot the running guest descends from, and the edits create, revert and
delete make to it.  Pure functions of a JSON document (the value of
``storekeys.snapshots(uuid)``), so the tree rules are unit-tested without
QEMU (tests/unit/test_snaptree.py) and every change is one compare-and-swap
of that document.

The document::

    {"version": 1, "current": "s2" | null,
     "snapshots": {"s1": {"id": ..., "parent": null, "created": 1700000000.0,
                          "kind": "memory" | "disk", ...}, ...}}

``current`` is the snapshot the running state was taken from or reverted
to: the parent of the next snapshot.  Deleting a snapshot hands its
children to its own parent (and ``current`` too, if it pointed there), so
the tree stays connected; the disk data needs no merging because each
snapshot is a complete, reference-counted qcow2 internal snapshot
(docs/snapshots.md).
"""

from __future__ import annotations

import copy
import re

VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class TreeError(Exception):
    """A refused edit; ``kind`` says which (exists, unknown, name)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def empty() -> dict:
    return {"version": VERSION, "current": None, "snapshots": {}}


def normalise(doc) -> dict:
    """A stored document, or an empty one if it is absent or not ours."""
    if not isinstance(doc, dict) or not isinstance(doc.get("snapshots"), dict):
        return empty()
    out = copy.deepcopy(doc)
    if out.get("current") not in out["snapshots"]:
        out["current"] = None
    return out


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TreeError("name", f"Invalid snapshot name {name!r}: 1-64 letters, digits, '.', '_', '+' "
                                "or '-', starting with a letter or digit")
    return name


def get(doc: dict, name: str, dom: str = "") -> dict:
    snap = doc["snapshots"].get(name)
    if snap is None:
        raise TreeError("unknown", f"Domain {dom} has no snapshot named {name!r}" if dom
                        else f"No snapshot named {name!r}")
    return snap


def add(doc: dict, name: str, rec: dict, dom: str = "") -> dict:
    """The document with snapshot *name* added as a child of ``current``,
    which it becomes."""
    check_name(name)
    if name in doc["snapshots"]:
        raise TreeError("exists", f"Domain {dom} already has a snapshot named {name!r}" if dom
                        else f"A snapshot named {name!r} already exists")
    out = copy.deepcopy(doc)
    out["snapshots"][name] = dict(rec, parent=doc["current"])
    out["current"] = name
    return out


def revert(doc: dict, name: str, dom: str = "") -> dict:
    get(doc, name, dom)
    out = copy.deepcopy(doc)
    out["current"] = name
    return out


def delete(doc: dict, name: str, dom: str = "") -> dict:
    """The document without *name*: its children (and ``current``) move
    up to its parent."""
    snap = get(doc, name, dom)
    out = copy.deepcopy(doc)
    parent = snap.get("parent")
    del out["snapshots"][name]
    for s in out["snapshots"].values():
        if s.get("parent") == name:
            s["parent"] = parent
    if out["current"] == name:
        out["current"] = parent
    return out


def children(doc: dict, name: str | None) -> list[str]:
    return sorted((n for n, s in doc["snapshots"].items() if s.get("parent") == name),
                  key=lambda n: (doc["snapshots"][n].get("created", 0), n))


def ordered(doc: dict) -> list[str]:
    """Names depth-first from the roots, siblings by creation time: each
    snapshot after its parent."""
    out: list[str] = []
    stack = list(reversed(children(doc, None)))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(children(doc, n)))
    return out


def ids(doc: dict) -> set[str]:
    """The disk-snapshot ids every snapshot uses (a rolled-back create's id is not among them)."""
    return {str(s.get("id")) for s in doc["snapshots"].values()}
