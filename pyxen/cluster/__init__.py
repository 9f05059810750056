"""A cluster of xends on etcd: membership, the domain lock and self-fencing.

The pieces, each its own module, built on :class:`pyxen.etcdstore.EtcdStore`
(the :class:`pyxen.store.Store` interface plus leases and watches):

* :mod:`.membership` — each xend holds one etcd *lease*, keeps it alive
  from a thread of its own, and publishes its host record (name, addresses,
  free memory, vCPUs, bridges, domain count) under a key attached to that
  lease, so the record disappears when the host does.  ``hosts()`` lists
  the cluster (up and lost hosts), ``watch()`` turns etcd's watch into
  :class:`ClusterEvent` for xend's event stream.
* :mod:`.lock` — the domain lock: an owner key per domain uuid (and one per
  name), created only if absent and attached to the owner's lease.  Its
  revision is the fencing token; migration hands it over in the commit
  transaction, comparing that revision, so no instant has two owners.
* :mod:`.fence` — self-fencing on xend's own monotonic clock: a lease's TTL
  is a minimum, not a deadline (a leader change renews every lease), so a
  host that has not renewed for TTL minus a margin pauses (or destroys) its
  domains itself instead of trusting etcd to expire it.

This package knows nothing of xend: xend gives it callbacks (what to
publish, what to pause), so the layering stays store → cluster → xend.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ClusterError(Exception):
    """The cluster cannot do what was asked (etcd unreachable, no quorum,
    a lock held elsewhere); the message is one line for a person."""


@dataclass(frozen=True)
class ClusterEvent:
    """One change in the cluster, as xend's event stream shows it.

    ``kind`` is one of ``host-up`` (a host's record appeared), ``host-update``
    (it republished), ``host-lost`` (its leased record is gone: lease expired
    or revoked), ``owner`` (a domain's owner key was created or handed over;
    ``host`` is the new owner) and ``owner-released`` (the owner key is gone).
    ``revision`` is etcd's revision of the change: a watch resumes after it.
    """
    kind: str
    host: str
    uuid: str = ""
    name: str = ""
    revision: int = 0
    info: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {"event": f"cluster-{self.kind}", "host": self.host, "revision": self.revision}
        if self.uuid:
            d["uuid"] = self.uuid
        if self.name:
            d["name"] = self.name
        return d
