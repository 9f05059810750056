"""The sharing guard across hosts: claims on shared storage in etcd.

The local guard (pyxen.storage.guard) sees only this host's domains.  In a
cluster each disk a domain gets is also *claimed*: for every cluster-wide
name of its storage (a file's canonical path on the shared mount, a block
device's WWID/serial/dm uuid), ``cluster/claims/<id>/by/<uuid>@<host>``
holds ``{"host", "name", "uuid", "mode"}`` on the claiming host's lease.
Xen's rule then holds across hosts: a read-write disk is refused while any
other domain has a claim on it, a read-only one while another has it
read-write.  Claims of the same uuid never conflict (a migration's source
and target hold one each until the source lets go).

Claims of one id are serialized by its ``gen`` key: each claim compares
the revision it read and rewrites it in the same transaction, so two hosts
racing for one disk cannot both see it free.
"""

from __future__ import annotations

import json

from .. import storekeys as K
from ..store import Compare, Delete, Put, StoreConflict, dump_json
from . import ClusterError


class DiskClaimed(ClusterError):
    pass


def _entries(store, ident: str) -> dict:
    base = K.claim(ident) + "/by/"
    out = {}
    for key, e in store.read_prefix(base).items():
        try:
            out[key] = json.loads(e.value)
        except ValueError:
            continue
    return out


def claim(store, host: str, lease: int, uuid: str, name: str, disks: list[tuple[str, set[str], bool]]) -> None:
    """Claim *disks* — (what, ids, readonly) — for domain *uuid* on *host*;
    DiskClaimed naming the other domain and host if Xen's rule forbids it."""
    for what, ids, readonly in disks:
        for ident in sorted(ids):
            for _ in range(10):
                gen = K.claim(ident) + "/gen"
                rev = store.revision(gen)
                for rec in _entries(store, ident).values():
                    if rec.get("uuid") == uuid:
                        continue
                    if not readonly or rec.get("mode") == "w":
                        raise DiskClaimed(
                            f"disk {what} is in use by domain {rec.get('name', '?')} on host "
                            f"{rec.get('host', '?')} ({'read-write' if rec.get('mode') == 'w' else 'read-only'})")
                mine = Put(f"{K.claim(ident)}/by/{uuid}@{host}",
                           dump_json({"host": host, "name": name, "uuid": uuid, "mode": "r" if readonly else "w",
                                      "ident": ident}), lease=lease)
                try:
                    store.txn([Compare(gen, rev)], [Put(gen, dump_json({"ident": ident})), mine])
                    break
                except StoreConflict:
                    continue
            else:
                raise ClusterError(f"the claim on disk {what} keeps changing; try again")


def release(store, host: str, uuid: str) -> None:
    """Drop every claim of domain *uuid* made by *host*."""
    suffix = f"/by/{uuid}@{host}"
    ops = [Delete(k) for k in store.keys(K.CLAIMS_PREFIX) if k.endswith(suffix)]
    if ops:
        store.txn([], ops)
