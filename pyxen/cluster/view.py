"""The cluster as the commands show it: hosts for ``xm host-list`` and
placement, every host's domains for ``xm list --cluster``, a host name
resolved to its relocation address for ``xm migrate dom HOSTNAME``.

Hosts come from the foundation's member records (``cluster/members/<h>``,
attached to each host's lease, and ``cluster/known/<h>``, the last record a
host published, kept after its lease is gone: such a host is *lost*).
Domains come from each host's own listing (``hosts/<h>/listing``), which
that host republishes when its rows change (:func:`publish_listing`), so
the whole cluster's list is one prefix read, not a request to every host
(``xm list --cluster`` with 3 hosts × 30 domains stays near ``xm list``).
"""

from __future__ import annotations

import json
import time

from .. import storekeys
from ..store import Store, dump_json
from .placement import UP, HostInfo

# The foundation's key prefixes (pyxen.storekeys once the cluster branch is
# merged; spelled here until then so this module imports either way).
MEMBERS_PREFIX = getattr(storekeys, "MEMBERS_PREFIX", "cluster/members/")
KNOWN_PREFIX = getattr(storekeys, "KNOWN_PREFIX", "cluster/known/")
LOST = "lost"


def _host_info(rec: dict, state: str, age: float | None) -> HostInfo:
    def num(k):
        try:
            return int(rec.get(k) or 0)
        except (TypeError, ValueError):
            return 0
    missing = rec.get("missing")
    return HostInfo(
        name=str(rec.get("name", "")), state=str(rec.get("state") or state) if state == UP else state,
        address=str(rec.get("address", "")), free_memory=num("free_memory"), vcpus=num("vcpus"),
        domains=num("domains"), bridges=frozenset(str(b) for b in rec.get("bridges") or ()),
        missing=frozenset(missing) if isinstance(missing, list) else frozenset(),
        port=num("relocation_port"), lease_age=age)


def _lease_age(store: Store, rec: dict, now: float) -> float | None:
    if isinstance(rec.get("renewed"), (int, float)):
        return max(0.0, now - float(rec["renewed"]))
    lease = rec.get("lease")
    if isinstance(lease, int) and lease and getattr(store, "clustered", False):
        granted, left = store.lease_remaining(lease)
        return float(granted - left) if granted else None
    return None


def _read_prefix(store: Store, prefix: str) -> dict:
    # Store.read_prefix is the foundation's (one request on etcd); a store
    # without it is read key by key.
    if hasattr(store, "read_prefix"):
        return store.read_prefix(prefix)
    return {k: e for k in store.keys(prefix) if (e := store.read(k)) is not None}


def _records(store: Store, prefix: str) -> dict[str, dict]:
    out = {}
    for k, e in _read_prefix(store, prefix).items():
        try:
            rec = json.loads(e.value)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("name"):
            out[str(rec["name"])] = rec
    return out


def hosts(store: Store, now: float | None = None) -> list[HostInfo]:
    """Every host the cluster knows, by name: up (a live member record, in
    the state it published: up, fenced, maintenance) or lost."""
    now = time.time() if now is None else now
    live = _records(store, MEMBERS_PREFIX)
    known = _records(store, KNOWN_PREFIX)
    out = [_host_info(rec, UP, _lease_age(store, rec, now)) for rec in live.values()]
    out += [_host_info(rec, LOST, None) for name, rec in known.items() if name not in live]
    return sorted(out, key=lambda h: h.name)


def resolve(store: Store, name: str) -> HostInfo | None:
    """The member called *name* (for xm migrate dom HOSTNAME), else None."""
    for h in hosts(store):
        if h.name == name:
            return h
    return None


# What a listing row carries: xm list's columns and what xentop-like tools need.
ROW_FIELDS = ("name", "domid", "uuid", "memory", "vcpus", "online_vcpus", "state", "cpu_time")


def listing_rows(infos: list[dict]) -> list[dict]:
    return [{k: d.get(k) for k in ROW_FIELDS} for d in infos]


def publish_listing(store: Store, host: str, infos: list[dict], last: list | None = None) -> list:
    """Write this host's rows if they changed since *last* (what the previous
    call returned); CPU time is rounded to whole seconds so a busy guest
    does not rewrite the key every second."""
    rows = listing_rows(infos)
    for r in rows:
        r["cpu_time"] = round(float(r.get("cpu_time") or 0.0))
    if rows != last:
        store.put(storekeys.listing(host), dump_json(rows))
    return rows


def cluster_domains(store: Store, me: str, local: list[dict]) -> list[dict]:
    """Every domain of the cluster, each with its ``host``: this host's from
    *local* (live), the others' from their published listings."""
    out = [dict(d, host=me) for d in local]
    names = {h.name for h in hosts(store)} - {me}
    for h in sorted(names):
        rows = store.get_json(storekeys.listing(h), [])
        if isinstance(rows, list):
            out += [dict(r, host=h) for r in rows if isinstance(r, dict) and r.get("name")]
    return out
