"""xend's PCI passthrough: the checks before a domain gets a host device,
hotplug (``xm pci-attach/-detach/-list``) and the host-side rebinding
(``xm pci-assignable-add/-remove``, ``xm pci-list-assignable-devices``).

A device goes to at most one domain: every domain in the registry counts,
whatever its state.  The sysfs work is in :mod:`pyxen.hypervisor.pci`; the
driver a device had before it was made assignable is remembered in the
store (:func:`pyxen.storekeys.pci_assignable`, host-scoped) so
``pci-assignable-remove -r`` can give it back, even after an xend restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import storekeys
from ..config.errors import ConfigError
from ..config.specs import PciSpec, parse_pci
from ..hypervisor.pci import PciError, PciHost, normal_bdf
from ..hypervisor.qemu import argv as qargv
from ..hypervisor.qemu.monitor import QMPError, QmpTimeout
from . import durable
from .errors import Conflict, InvalidRequest, XendError
from .hooks import Feature

# A domain here is any object with its name and cfg (the Domain, or a
# test's stand-in); the registry anything with by_uuid and store.  Not
# imported: the domain modules import this one.
Domain = Any
Domains = Any

log = logging.getLogger("pyxen.pci")


def host() -> PciHost:
    return PciHost.from_env()


def _key(reg: "Domains", bdf: str) -> str:
    return storekeys.pci_assignable(reg.store.host, bdf)


def holder(domains, bdf: str, exclude: "Domain | None" = None) -> "Domain | None":
    """The domain of *domains* that has *bdf*, if any."""
    for d in domains:
        if d is not exclude and any(p.bdf == bdf for p in d.cfg.pci):
            return d
    return None


def check_devices(domains, name: str, specs: list[PciSpec], exclude: "Domain | None" = None) -> None:
    """Refuse devices used twice, held by another domain, or not ready for VFIO."""
    seen: set[str] = set()
    pci = host()
    for p in specs:
        if p.bdf in seen:
            raise InvalidRequest(f"PCI device {p.bdf} is given twice to domain {name}")
        seen.add(p.bdf)
        other = holder(domains, p.bdf, exclude)
        if other is not None:
            raise Conflict(f"PCI device {p.bdf} is already assigned to domain {other.name}")
        try:
            pci.check_assignable(p.bdf)
        except PciError as e:
            raise InvalidRequest(str(e)) from None


def devices(dom: "Domain") -> list[dict]:
    """The domain's PCI devices, for ``xm pci-list``."""
    return [{"domain": p.domain, "bus": p.bus, "slot": p.slot, "func": p.func, "vslot": p.vslot,
             "bdf": p.bdf, "opts": dict(p.opts)} for p in dom.cfg.pci]


def _spec(dev, vslot=None) -> PciSpec:
    if not isinstance(dev, str) or not dev or "," in dev or "@" in dev:
        raise InvalidRequest(f"Invalid PCI device {dev!r}: expected [DDDD:]BB:SS.F")
    text = dev
    if vslot not in (None, ""):
        v = str(vslot).lower().removeprefix("0x")
        text += "@" + v
    try:
        return parse_pci(text)
    except ConfigError as e:
        raise InvalidRequest(str(e)) from None


async def attach(dom: "Domain", dev, vslot=None) -> PciSpec:
    """``xm pci-attach``: hot-plug host device *dev* into the running guest."""
    spec = _spec(dev, vslot)
    async with dom.lock:
        dom.require_live("pci-attach")
        if any(p.bdf == spec.bdf for p in dom.cfg.pci):
            raise Conflict(f"PCI device {spec.bdf} is already assigned to domain {dom.name}")
        # The reservations' lock: no create or other attach can take the
        # same device between the check and the config update.
        async with dom.reservations.lock:
            check_devices(dom.reservations.domains(), dom.name, [spec], dom)
            if dom.qemu_ident is not None:
                # A confined QEMU (xend/confine.py) cannot open /dev/vfio nor
                # lock guest memory; only a domain created with pci = [...]
                # gets a root QEMU with what VFIO needs.
                raise Conflict(f"pci-attach {spec.bdf} to {dom.name}: its QEMU runs confined (uid "
                               f"{dom.qemu_ident[0]}) and cannot open /dev/vfio; give PCI devices at create "
                               "(pci = [...])")
            async with durable.change(dom, "pci-attach", config=True):      # persist, then act
                dom.cfg.pci.append(spec)
        try:
            await dom.monitor.device_add(qargv.pci_device_props(spec))
        except (QMPError, QmpTimeout) as e:
            dom.cfg.pci.remove(spec)
            dom.persist_config_quietly()
            raise XendError(f"pci-attach {spec.bdf} to {dom.name} failed: {e}") from None
        log.info("%s: PCI device %s attached", dom.name, spec.bdf)
        return spec


async def detach(dom: "Domain", dev, timeout: float = 30.0) -> None:
    """``xm pci-detach``: the guest lets go of the device, then QEMU drops it."""
    spec = _spec(dev)
    async with dom.lock:
        dom.require_live("pci-detach")
        mine = [p for p in dom.cfg.pci if p.bdf == spec.bdf]
        if not mine:
            raise InvalidRequest(f"PCI device {spec.bdf} is not assigned to domain {dom.name}")
        dev_id = qargv.pci_device_id(spec)
        gone = dom.unplugs.expect(dev_id)
        try:
            await dom.monitor.device_del(dev_id)
            await asyncio.wait_for(gone.wait(), timeout)
        except asyncio.TimeoutError:
            raise XendError(f"Domain {dom.name} did not release PCI device {spec.bdf} within "
                            f"{timeout:.0f} s") from None
        except (QMPError, QmpTimeout) as e:
            raise XendError(f"pci-detach {spec.bdf} from {dom.name} failed: {e}") from None
        finally:
            dom.unplugs.forget(dev_id)
        async with durable.change(dom, "pci-detach", config=True) as ch:
            # Released already: put it back if the record cannot say so.
            ch.undo(lambda: dom.monitor.device_add(qargv.pci_device_props(mine[0])))
            dom.cfg.pci.remove(mine[0])
        log.info("%s: PCI device %s detached", dom.name, spec.bdf)


# ------------------------------------------------------ host-side rebinding
def _bdf(dev) -> str:
    try:
        return normal_bdf(dev)
    except PciError as e:
        raise InvalidRequest(str(e)) from None


def list_assignable() -> list[str]:
    return host().assignable()


async def assignable_add(reg: "Domains", dev) -> dict:
    """Bind a host device to vfio-pci, remembering its driver for -r."""
    bdf = _bdf(dev)
    loop = asyncio.get_running_loop()
    try:
        # (sysfs binding may take a moment: off the event loop)
        old = await loop.run_in_executor(None, host().make_assignable, bdf)
    except PciError as e:
        raise InvalidRequest(str(e)) from None
    if old is not None:
        reg.store.put_json(_key(reg, bdf), {"driver": old})
        log.info("PCI device %s: unbound from %s, bound to vfio-pci", bdf, old)
    return {"dev": bdf, "driver": old}


async def assignable_remove(reg: "Domains", dev, rebind: bool) -> dict:
    """Take a device back from vfio-pci (refused while a domain has it);
    with *rebind*, give it back to the driver it had."""
    bdf = _bdf(dev)
    other = holder(reg.by_uuid.values(), bdf)
    if other is not None:
        raise Conflict(f"PCI device {bdf} is assigned to domain {other.name}; pci-detach it first")
    rec = reg.store.get_json(_key(reg, bdf), {}) or {}
    driver = rec.get("driver") if rebind and isinstance(rec.get("driver"), str) else None
    if rebind and driver is None:
        log.warning("PCI device %s: no original driver recorded; letting the kernel choose", bdf)
    pci = host()
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, pci.release, bdf, driver, rebind)
    except PciError as e:
        raise InvalidRequest(str(e)) from None
    reg.store.delete(_key(reg, bdf))
    log.info("PCI device %s: released from vfio-pci%s", bdf, f", rebound to {driver}" if driver else "")
    return {"dev": bdf, "driver": driver}


class PciFeature(Feature):
    """Host PCI devices a domain's config names: each held by one domain,
    and ready for VFIO (QEMU's argv adds them; hotplug is attach/detach)."""

    name = "pci"

    def check(self, cfg, others) -> None:
        if cfg.pci:
            check_devices(others, cfg.name, cfg.pci)
