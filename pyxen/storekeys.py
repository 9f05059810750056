"""Every key of xend's store, built here and nowhere else.

Two namespaces:

* **host-scoped**, under ``hosts/<host>/``: what is true of one host only
  and must never be seen by another host sharing the store — the next domid
  (``next-domid``), the accelerator probe cache (``accel-probe``), the
  drivers PCI devices had before ``xm pci-assignable-add``
  (``pci-assignable/<bdf>``) and the runtime record of each domain running
  here (``domains/<uuid>/runtime``: domid, pid, state, the job in flight).
* **shared**: what a cluster shares and any host may act on — a domain's
  configuration by uuid (``domains/<uuid>/config``), vnets
  (``vnets/<id>``), UEFI variables (``nvram/<uuid>``), vTPM state
  (``vtpm/<name>/...``: swtpm's files as blobs), a domain's snapshot
  tree by uuid (``snapshots/<uuid>``: names, parents, disk-snapshot ids,
  state files; xend/snaptree.py) — shared so a cluster sees a domain's
  snapshots wherever it runs, and by uuid so it outlives ``xm save`` /
  ``xm restore`` and xend restarts.

The first store layout (before the split) had ``host/...`` and
``domains/<uuid>/runtime`` at the top; :func:`upgrade_v1` maps its keys to
these, so a host that upgrades keeps its domains.
"""

from __future__ import annotations

import socket

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
    rest = key[len(runtime_prefix(host)):] if key.startswith(runtime_prefix(host)) else ""
    uuid, _, leaf = rest.partition("/")
    return uuid if uuid and leaf == "runtime" else None


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


# ------------------------------------------------------------------- upgrade
def upgrade_v1(key: str, host: str) -> str:
    """The key a value stored under *key* in the first layout has now."""
    if key.startswith("host/"):
        return host_prefix(host) + key[len("host/"):]
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "domains" and parts[2] == "runtime":
        return runtime(host, parts[1])
    return key
