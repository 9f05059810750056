"""The collaborators a Domain is given by the registry that made it —
explicit, instead of a back-pointer to the registry and its privates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:       # types only: none of these imports the domain
    from ..config.domain import DomainConfig
    from ..config.xendconfig import XendConfig
    from ..paths import Paths
    from ..store import Store
    from .network import HostNetwork
    from .reservations import Reservations


@dataclass
class DomainServices:
    store: "Store"
    paths: "Paths"
    config: "XendConfig"
    net: "HostNetwork"
    reservations: "Reservations"
    # emit(kind, domain, **extra): tell event-stream subscribers
    emit: Callable[..., None]
    # the registry forgets a destroyed domain
    remove: Callable[[Any], None]
    # start a new domain from a config (rename-restart's successor)
    create: Callable[["DomainConfig"], Awaitable[Any]]
    # count_migration(direction, ok, nbytes): GET /metrics
    count_migration: Callable[..., None]
    # this host's part in a cluster (pyxen.xend.cluster.ClusterNode), None without one
    cluster: Any = None
