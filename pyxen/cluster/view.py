"""The cluster as the commands show it: hosts for ``xm host-list`` and
placement, every host's domains for ``xm list --cluster``, a host name
resolved to its relocation address for ``xm migrate dom HOSTNAME``.

Hosts come from the foundation's member records (``cluster/members/<h>``,
attached to each host's lease, and ``cluster/known/<h>``, the last record a
host published, kept after its lease is gone: such a host is *lost*).
Domains come from each host's own listing (``hosts/<h>/listing``), which
that host republishes when its rows change (:class:`ListingPublisher`), so
the whole cluster's list is one prefix read, not a request to every host
(``xm list --cluster`` with 3 hosts × 30 domains stays near ``xm list``).
"""

from __future__ import annotations

from .. import storekeys
from ..store import Store, dump_json
from .membership import Membership
from .placement import HostInfo

LOST = "lost"


def split_hostport(hp: str) -> tuple[str, int]:
    """'10.0.0.2:8002' / '[fd00::2]:8002' -> (address, port); no port: 0."""
    host, sep, port = hp.rpartition(":")
    if not sep or not port.isdigit():
        return hp, 0
    return host.strip("[]"), int(port)


def from_member(m) -> HostInfo:
    """A :class:`pyxen.cluster.membership.HostInfo` as placement sees it:
    the address is the relocation server's (what a migration connects to)."""
    addr, port = split_hostport(m.relocation) if m.relocation else (m.address, 0)
    return HostInfo(name=m.name, state=m.state, address=addr or m.address, free_memory=m.free_mem,
                    vcpus=m.vcpus, domains=m.domains, bridges=frozenset(m.bridges), port=port,
                    lease_age=m.lease_age)


def hosts(store: Store) -> list[HostInfo]:
    """Every host the cluster knows, by name: up (a live member record) or
    lost (only the last record it published is left); an up host someone
    put in maintenance (:func:`set_maintenance`) is ``maintenance``."""
    from dataclasses import replace
    held = in_maintenance(store)
    return [replace(h, state=MAINTENANCE) if h.name in held and h.state == "up" else h
            for h in (from_member(m) for m in Membership(store, "").hosts())]


MAINTENANCE = "maintenance"


def in_maintenance(store: Store) -> set[str]:
    """The hosts in lasting maintenance."""
    from urllib.parse import unquote
    return {unquote(k[len(storekeys.MAINTENANCE_PREFIX):]) for k in store.keys(storekeys.MAINTENANCE_PREFIX)}


def set_maintenance(store: Store, host: str, on: bool, by: str = "", now: float = 0.0) -> bool:
    """Put *host* in maintenance (or end it); whether that changed anything."""
    key = storekeys.maintenance(host)
    was = store.get(key) is not None
    if on and not was:
        store.put(key, dump_json({"host": host, "by": by, "since": now}))
    elif not on and was:
        store.delete(key)
    return was != on


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


class ListingPublisher:
    """Keeps this host's listing key current: rewritten at once when a row
    changes in anything but CPU time, and at most every *every* seconds for
    CPU time alone (a running guest's time changes every second; the store
    should not).  So another host's Time(s) may be that much behind."""

    def __init__(self, store: Store, host: str, every: float = 10.0):
        self.store, self.host, self.every = store, host, every
        self._last: list | None = None
        self._when = float("-inf")

    def publish(self, infos: list[dict], now: float) -> bool:
        rows = listing_rows(infos)
        for r in rows:
            r["cpu_time"] = round(float(r.get("cpu_time") or 0.0), 1)
        shape = [{k: v for k, v in r.items() if k != "cpu_time"} for r in rows]
        old = None if self._last is None else [{k: v for k, v in r.items() if k != "cpu_time"}
                                               for r in self._last]
        if shape == old and (rows == self._last or now - self._when < self.every):
            return False
        self.store.put(storekeys.listing(self.host), dump_json(rows))
        self._last, self._when = rows, now
        return True


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
