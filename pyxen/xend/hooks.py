"""The hook interface through which a domain feature (HVM firmware and
display, vTPM, PCI passthrough) takes part in a domain's life, and the
narrow context a hook is given instead of the Domain itself.

A feature overrides only the steps it needs; the domain calls every
feature at each step, in the order of :data:`pyxen.xend.features.FEATURES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:       # types only: no module here imports the domain at run time
    from ..config.domain import DomainConfig
    from ..config.xendconfig import XendConfig
    from ..hypervisor.qemu.argv import Runtime
    from ..hypervisor.qemu.monitor import Monitor
    from ..paths import Paths
    from ..store import Store


class FeatureContext:
    """What a feature may see and do of one domain: its identity, config,
    monitor and run directory, the store and xend's settings, the user
    QEMU runs as, and the VNC display it may record.  Nothing else of the domain."""

    def __init__(self, dom: Any):
        self._dom = dom

    name = property(lambda self: self._dom.name)
    uuid = property(lambda self: self._dom.uuid)
    domid = property(lambda self: self._dom.domid)
    pid = property(lambda self: self._dom.pid)
    state = property(lambda self: str(self._dom.state))
    # One of two copies of a same-host migration whose state in the store
    # (UEFI variables, vTPM) is the other copy's to keep (domain.py).
    shadow = property(lambda self: bool(self._dom.twin or self._dom.superseded))

    @property
    def cfg(self) -> "DomainConfig":
        return self._dom.cfg

    @property
    def monitor(self) -> "Monitor | None":
        return self._dom.monitor

    @property
    def store(self) -> "Store":
        return self._dom.store

    @property
    def paths(self) -> "Paths":
        return self._dom.paths

    @property
    def config(self) -> "XendConfig":
        return self._dom.config

    @property
    def run_dir(self) -> Path:
        return self._dom.paths.domain_run(self._dom.domid)

    @property
    def qemu_ident(self) -> tuple[int, int] | None:
        """(uid, gid) QEMU runs as (xend/confine.py); None: root."""
        return self._dom.qemu_ident

    @property
    def vnc(self) -> dict | None:
        return self._dom.vnc

    @vnc.setter
    def vnc(self, value: dict | None) -> None:
        self._dom.vnc = value


class Feature:
    """One feature's hooks; each default does nothing."""

    name = "feature"

    def check(self, cfg: "DomainConfig", others: Iterable[Any]) -> None:
        """Before a create, restore or arriving migration: refuse (InvalidRequest,
        Conflict) what this host or the other domains (*others*) cannot allow."""

    def check_restore(self, cfg: "DomainConfig", meta: dict, what: str) -> None:
        """Before loading saved state (*meta*: what the save recorded, from *what*)."""

    async def before_start(self, ctx: FeatureContext, rt: "Runtime") -> None:
        """The run dir exists, QEMU does not yet: prepare what it opens."""

    async def after_start(self, ctx: FeatureContext) -> None:
        """QEMU runs, the guest not yet."""

    async def adopt(self, ctx: FeatureContext) -> None:
        """After an xend restart, QEMU still runs."""

    async def release(self, ctx: FeatureContext) -> None:
        """QEMU has stopped: keep what outlives it, stop what served it."""

    def save_meta(self, ctx: FeatureContext) -> dict:
        """What a save file or migration must record for a restore to match."""
        return {}
