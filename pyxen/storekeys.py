"""Every key of xend's store, built here and nowhere else.

Two namespaces:

* **host-scoped**, under ``hosts/<host>/``: what is true of one host only
  and must never be seen by another host sharing the store — the next domid
  (``next-domid``), the accelerator probe cache (``accel-probe``), the
  drivers PCI devices had before ``xm pci-assignable-add``
  (``pci-assignable/<bdf>``) and the runtime record of each domain running
  here (``domains/<uuid>/runtime``: domid, pid, state, the job in flight);
  beside it, during a migration to this same host, the arriving copy's
  record with its config (``domains/<uuid>/incoming``): one uuid, two
  QEMUs, until the commit makes the arriving record the runtime one.
* **shared**: what a cluster shares and any host may act on — a domain's
  configuration by uuid (``domains/<uuid>/config``), vnets
  (``vnets/<id>``), UEFI variables (``nvram/<uuid>``), vTPM state
  (``vtpm/<name>/...``: swtpm's files as blobs), a domain's snapshot
  tree by uuid (``snapshots/<uuid>``: names, parents, disk-snapshot ids,
  state files; xend/snaptree.py) — shared so a cluster sees a domain's
  snapshots wherever it runs, and by uuid so it outlives ``xm save`` /
  ``xm restore`` and xend restarts.

* **cluster**, under ``cluster/`` (only in a cluster store): each host's
  record, attached to its lease (``cluster/members/<host>``) and the last
  one it published, kept after it is gone (``cluster/known/<host>``); the
  domain lock: a domain's owner by uuid (``cluster/owners/<uuid>``) and by
  name (``cluster/names/<name>``), both attached to the owner's lease; the
  sharing guard's claims on shared storage (``cluster/claims/<id>``).

The first store layout (before the split) had ``host/...`` and
``domains/<uuid>/runtime`` at the top; :func:`upgrade_v1` maps its keys to
these, so a host that upgrades keeps its domains.
"""

from __future__ import annotations

import hashlib
import socket
from urllib.parse import quote

HOSTS_PREFIX = "hosts/"
CONFIG_PREFIX = "domains/"
VNET_PREFIX = "vnets/"


def local_host() -> str:
    """This host's name as a key part (never empty, never a slash)."""
    name = socket.gethostname().replace("/", "_").strip(".") or "localhost"
    return name


# --------------------------------------------------------------- host-scoped
def host_prefix(host: str) -> str:
    return f"{HOSTS_PREFIX}{host}/"


def host_of(key: str) -> str | None:
    """The host of a host-scoped key, else None."""
    if not key.startswith(HOSTS_PREFIX):
        return None
    return key[len(HOSTS_PREFIX):].partition("/")[0] or None


def next_domid(host: str) -> str:
    return f"{host_prefix(host)}next-domid"


def accel_probe(host: str) -> str:
    return f"{host_prefix(host)}accel-probe"


def pci_assignable(host: str, bdf: str) -> str:
    # Colons are legal in keys but not in every file system a store may sit on.
    return f"{host_prefix(host)}pci-assignable/{bdf.replace(':', '-')}"


def runtime_prefix(host: str) -> str:
    return f"{host_prefix(host)}domains/"


def runtime(host: str, uuid: str) -> str:
    return f"{runtime_prefix(host)}{uuid}/runtime"


def uuid_of_runtime(host: str, key: str) -> str | None:
    """The uuid in a key made by :func:`runtime`, else None."""
    return _uuid_of_leaf(host, key, "runtime")


def incoming(host: str, uuid: str) -> str:
    """The record (with its config) of a domain arriving by a migration
    from this same host: the source's runtime record keeps its key."""
    return f"{runtime_prefix(host)}{uuid}/incoming"


def uuid_of_incoming(host: str, key: str) -> str | None:
    """The uuid in a key made by :func:`incoming`, else None."""
    return _uuid_of_leaf(host, key, "incoming")


def _uuid_of_leaf(host: str, key: str, leaf_name: str) -> str | None:
    rest = key[len(runtime_prefix(host)):] if key.startswith(runtime_prefix(host)) else ""
    uuid, _, leaf = rest.partition("/")
    return uuid if uuid and leaf == leaf_name else None


# -------------------------------------------------------------------- shared
def config(uuid: str) -> str:
    return f"{CONFIG_PREFIX}{uuid}/config"


def uuid_of_config(key: str) -> str | None:
    rest = key[len(CONFIG_PREFIX):] if key.startswith(CONFIG_PREFIX) else ""
    uuid, _, leaf = rest.partition("/")
    return uuid if uuid and leaf == "config" else None


def vnet(vnet_id: str) -> str:
    return f"{VNET_PREFIX}{vnet_id}"


def nvram(uuid: str) -> str:
    return f"nvram/{uuid}"


def snapshots(uuid: str) -> str:
    return f"snapshots/{uuid}"


def vtpm(instance: int | None = None, uuid: str | None = None, name: str | None = None) -> str:
    """A vTPM's state: by Xen's ``instance=N``, else xl's ``uuid=``, else the
    domain's name.  The blobs of its swtpm files sit under this key."""
    if instance is not None:
        return f"vtpm/instance-{instance}"
    if uuid is not None:
        return f"vtpm/uuid-{uuid}"
    return f"vtpm/name-{name}"


# ------------------------------------------------------------------ cluster
CLUSTER_PREFIX = "cluster/"
MEMBERS_PREFIX = "cluster/members/"
KNOWN_PREFIX = "cluster/known/"
OWNERS_PREFIX = "cluster/owners/"
NAMES_PREFIX = "cluster/names/"
CLAIMS_PREFIX = "cluster/claims/"


def _part(text: str) -> str:
    """*text* as one key part: no slash, no leading dot (quoted, reversibly)."""
    q = quote(text, safe="")
    return "%2E" + q[1:] if q.startswith(".") else q


def member(host: str) -> str:
    return f"{MEMBERS_PREFIX}{_part(host)}"


def known_host(host: str) -> str:
    return f"{KNOWN_PREFIX}{_part(host)}"


def owner(uuid: str) -> str:
    return f"{OWNERS_PREFIX}{uuid}"


def owner_name(name: str) -> str:
    return f"{NAMES_PREFIX}{_part(name)}"


def claim(ident: str) -> str:
    """A sharing-guard claim on the storage *ident* names (a canonical
    path or a stable block-device id): hashed, since a path has slashes
    and may be long."""
    return f"{CLAIMS_PREFIX}{hashlib.sha256(ident.encode()).hexdigest()[:40]}"


# ------------------------------------------------------------------- upgrade
def upgrade_v1(key: str, host: str) -> str:
    """The key a value stored under *key* in the first layout has now."""
    if key.startswith("host/"):
        return host_prefix(host) + key[len("host/"):]
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "domains" and parts[2] == "runtime":
        return runtime(host, parts[1])
    return key


# ------------------------------------------------------- cluster operations
# (pyxen.cluster.failover, .evacuate, .view: at the end of the file so the
# foundation's own cluster section above merges without a conflict)
FAILOVER_PREFIX = "cluster/failover/"


def failover(uuid: str) -> str:
    """Shared: the claim of the last restart of *uuid* after its host failed
    (the incident, the host that starts it, how far it got)."""
    return f"{FAILOVER_PREFIX}{uuid}"


def listing(host: str) -> str:
    """Host-scoped: the host's own xm list rows, republished by the host
    when they change, so that xm list --cluster is one read, not one
    request per host."""
    return f"{host_prefix(host)}listing"
