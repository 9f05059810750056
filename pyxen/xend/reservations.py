"""What domains on this host must not share, and the lock that makes a
check and the change it allows one step: names, MAC addresses, disks
(the sharing guard) — PCI devices and vTPMs are checked by their
features against the same domains.

A create holds :attr:`Reservations.lock` from its checks until its config
is recorded; a hotplug holds it from its check until the device is in the
config, so no two requests can both take the same disk, MAC or device.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from contextlib import contextmanager
from typing import Any, Callable, Iterable

from ..config import names
from ..config.domain import DomainConfig
from ..config.errors import ConfigError
from ..net import mac as macs
from ..storage import guard, lvm
from .errors import Conflict, InvalidRequest

log = logging.getLogger("pyxen.domains")


class Reservations:
    def __init__(self, domains: Callable[[], Iterable[Any]]):
        self.domains = domains          # every domain of this host, whatever its state
        self.lock = asyncio.Lock()
        self._reserved_macs: set[str] = set()   # handed out, not yet in a config

    # ------------------------------------------------------------------ names
    def check_name_free(self, name: str, owner=None) -> None:
        if name == "Domain-0":
            raise InvalidRequest(f"Invalid domain name {name!r}: it is the host's")
        try:
            names.check(name)       # the one name rule (rename comes here too)
        except ConfigError as e:
            raise InvalidRequest(str(e).removeprefix("name: ")) from None
        for d in self.domains():
            if d.name == name and d is not owner:
                raise Conflict(f"Domain '{name}' already exists with ID '{d.domid}'")

    # ------------------------------------------------------------------- MACs
    def used_macs(self, exclude=None) -> set[str]:
        used = {macs.normal(v["mac"]) for d in self.domains() if d is not exclude
                for v in d.cfg.vifs if v.get("mac")}
        return used | self._reserved_macs

    def assign_macs(self, cfg: DomainConfig, exclude=None) -> None:
        """Give each vif without a MAC a random one, unique on this host
        (written into cfg); *exclude*: a domain whose MACs these are too
        (the source of a same-host migration)."""
        used = self.used_macs(exclude)
        mine: set[str] = set()
        for i, v in enumerate(cfg.vifs):
            if v.get("mac"):
                m = macs.normal(v["mac"])
                if m in mine:
                    raise InvalidRequest(f"vif {i}: MAC {m} is used twice in domain {cfg.name}")
                if m in used:
                    log.warning("%s: vif %d: MAC %s is also used by another domain", cfg.name, i, m)
                mine.add(m)
        for v in cfg.vifs:
            if not v.get("mac"):
                v["mac"] = macs.allocate(used | mine)
                mine.add(v["mac"])

    @contextmanager
    def mac_for(self, spec: dict, dom):
        """A MAC for a vif being attached to *dom*, held for the duration of the attach."""
        own = {macs.normal(v["mac"]) for v in dom.cfg.vifs if v.get("mac")}
        if spec.get("mac"):
            m = macs.normal(spec["mac"])
            if m in own:
                raise InvalidRequest(f"MAC {m} is already used by another vif of {dom.name}")
            if m in self.used_macs():
                log.warning("%s: MAC %s is also used by another domain", dom.name, m)
        else:
            m = spec["mac"] = macs.allocate(self.used_macs())
        self._reserved_macs.add(m)
        try:
            yield m
        finally:
            self._reserved_macs.discard(m)

    # ------------------------------------------------------------------ disks
    @staticmethod
    def check_disk_target(disk) -> None:
        if not disk.target or disk.kind == "nbd":
            return
        if not os.path.exists(disk.target):
            raise InvalidRequest(f"disk {disk.vdev}: {disk.target} does not exist"
                                 + (lvm.missing_hint(disk.target) if disk.kind == "phy" else ""))
        if disk.kind == "phy" and not stat.S_ISBLK(os.stat(disk.target).st_mode):
            raise InvalidRequest(f"disk {disk.vdev}: phy:{disk.target} is not a block device (use file: for images)")
        if not os.access(disk.target, os.R_OK if disk.readonly else os.R_OK | os.W_OK):
            raise InvalidRequest(f"disk {disk.vdev}: {disk.target} is not "
                                 f"{'readable' if disk.readonly else 'readable and writable'}")

    def exported_disks(self, exclude=None) -> list:
        """Every disk every domain of this host holds, whatever its state.

        Domains adopted after a restart, paused, shut down (preserved) and
        saved-but-reserved ones are all in the registry, so all count.
        """
        # A rename-restart corpse (Domain-<uuid>, QEMU stopped) hands its
        # disks to the domain restarted under its name.
        return [(d.name, disk) for d in self.domains()
                if d is not exclude and not (d.name == f"Domain-{d.uuid}" and d.state != "running")
                for disk in d.cfg.disks + d.overlay_bases()]

    def check_sharing(self, name: str, disks: list, exclude=None) -> None:
        """The sharing guard over the whole registry; w! overrides are
        logged.  *exclude*: the source of a same-host migration, whose
        disks its twin opens too (QEMU hands the images over at the switch)."""
        existing = guard.exports(self.exported_disks(exclude))
        try:
            warnings = guard.check(name, disks, existing)
        except guard.SharingError as e:
            raise Conflict(str(e)) from None
        for w in warnings:
            log.warning("%s", w)
