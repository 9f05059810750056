"""PCI passthrough on the host side: what sysfs says about a device, whether
QEMU's ``vfio-pci`` can be given it, and the rebinding that replaces Xen's
``pciback.hide`` (``xm pci-assignable-add/-remove``).

Xen hid a device from dom0 by binding it to pciback; with QEMU the device
must be bound to the ``vfio-pci`` driver instead, the host must have an
IOMMU, and every device of the device's IOMMU group must be bound to
vfio-pci too (or to no driver, or be a bridge), because VFIO hands out a
whole group at a time through ``/dev/vfio/<group>``.

Everything is read from (and written to) a sysfs root and a /dev root that
``PYXEN_SYSFS`` and ``PYXEN_DEVFS`` relocate, so tests run the same code
against a fake tree.  Errors are :class:`PciError` with one line saying
what is wrong and what to do about it.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

VFIO_DRIVER = "vfio-pci"
_BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
# PCI class codes (sysfs 'class' is 0xCCSSPP): 0x06 is "bridge device".
_BRIDGE_CLASS = 0x06


class PciError(Exception):
    """A device cannot be passed through or rebound; the message says why."""


def normal_bdf(text: str) -> str:
    """'1:0.0', '01:00.0', '0000:01:00.0' -> '0000:01:00.0' (sysfs's name)."""
    from ..config.errors import ConfigError
    from ..config.specs import parse_pci
    if not isinstance(text, str) or "," in text or "@" in text:
        raise PciError(f"Invalid PCI device {text!r}: expected [DDDD:]BB:SS.F")
    try:
        return parse_pci(text).bdf
    except ConfigError:
        raise PciError(f"Invalid PCI device {text!r}: expected [DDDD:]BB:SS.F") from None


@dataclass(frozen=True)
class PciHost:
    """The host's PCI devices as sysfs shows them."""

    sys: Path = Path("/sys")
    dev: Path = Path("/dev")

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "PciHost":
        env = os.environ if environ is None else environ
        return cls(Path(env.get("PYXEN_SYSFS") or "/sys"), Path(env.get("PYXEN_DEVFS") or "/dev"))

    # ------------------------------------------------------------- reading
    def device_dir(self, bdf: str) -> Path:
        return self.sys / "bus/pci/devices" / bdf

    def exists(self, bdf: str) -> bool:
        return self.device_dir(bdf).is_dir()

    def devices(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.sys / "bus/pci/devices") if _BDF_RE.match(n))
        except OSError:
            return []

    def driver(self, bdf: str) -> str | None:
        """The driver the device is bound to, or None."""
        try:
            return os.path.basename(os.readlink(self.device_dir(bdf) / "driver"))
        except OSError:
            return None

    def pci_class(self, bdf: str) -> int | None:
        try:
            return int((self.device_dir(bdf) / "class").read_text().strip(), 16)
        except (OSError, ValueError):
            return None

    def is_bridge(self, bdf: str) -> bool:
        c = self.pci_class(bdf)
        return c is not None and c >> 16 == _BRIDGE_CLASS

    def iommu_present(self) -> bool:
        try:
            return any(True for _ in os.scandir(self.sys / "kernel/iommu_groups"))
        except OSError:
            return False

    def iommu_group(self, bdf: str) -> str | None:
        try:
            return os.path.basename(os.readlink(self.device_dir(bdf) / "iommu_group"))
        except OSError:
            return None

    def group_devices(self, group: str) -> list[str]:
        try:
            return sorted(os.listdir(self.sys / "kernel/iommu_groups" / group / "devices"))
        except OSError:
            return []

    def assignable(self) -> list[str]:
        """Devices bound to vfio-pci: what ``xm pci-list-assignable-devices`` lists."""
        return [b for b in self.devices() if self.driver(b) == VFIO_DRIVER]

    # ------------------------------------------------------------- checks
    def check_assignable(self, bdf: str) -> str:
        """Everything QEMU's vfio-pci needs for *bdf*; returns its IOMMU group.

        Raises PciError naming the first thing missing: the device, an
        IOMMU, the binding to vfio-pci (of it and of its group) or the
        VFIO group device node."""
        if not self.exists(bdf):
            raise PciError(f"PCI device {bdf} does not exist on this host")
        if not self.iommu_present():
            raise PciError(f"cannot pass through {bdf}: this host has no IOMMU ({self.sys}/kernel/iommu_groups "
                           "is empty); enable VT-d or AMD-Vi in the firmware and boot with intel_iommu=on "
                           "or amd_iommu=on")
        group = self.iommu_group(bdf)
        if group is None:
            raise PciError(f"cannot pass through {bdf}: it belongs to no IOMMU group")
        drv = self.driver(bdf)
        if drv != VFIO_DRIVER:
            raise PciError(f"PCI device {bdf} is not assignable: it is bound to "
                           f"{drv + ' ' if drv else 'no driver '}instead of {VFIO_DRIVER} "
                           f"(xm pci-assignable-add {bdf} rebinds it)")
        for other in self.group_devices(group):
            if other == bdf:
                continue
            odrv = self.driver(other)
            if odrv not in (None, VFIO_DRIVER) and not self.is_bridge(other):
                raise PciError(f"cannot pass through {bdf}: {other}, in the same IOMMU group {group}, is "
                               f"bound to {odrv} (make it assignable too: xm pci-assignable-add {other})")
        node = self.dev / "vfio" / group
        if not node.exists():
            raise PciError(f"cannot pass through {bdf}: {node} does not exist (is the vfio-pci module loaded?)")
        return group

    # ----------------------------------------------------------- rebinding
    def _write(self, path: Path, text: str) -> None:
        try:
            with open(path, "w") as f:
                f.write(text)
        except OSError as e:
            raise PciError(f"cannot write {text.strip()!r} to {path}: {e.strerror or e}") from None

    def _wait_driver(self, bdf: str, want: str | None, timeout: float = 5.0) -> bool:
        """Binding is asynchronous for some drivers: poll until it shows."""
        deadline = time.monotonic() + timeout
        while True:
            if self.driver(bdf) == want:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _ensure_vfio_driver(self) -> None:
        drivers = self.sys / "bus/pci/drivers" / VFIO_DRIVER
        if drivers.is_dir():
            return
        if self.sys == Path("/sys"):
            subprocess.run(["modprobe", VFIO_DRIVER], capture_output=True, timeout=60)
        if not drivers.is_dir():
            raise PciError(f"the {VFIO_DRIVER} driver is not available ({drivers} is missing; "
                           f"modprobe {VFIO_DRIVER} failed)")

    def make_assignable(self, bdf: str) -> str | None:
        """Bind *bdf* to vfio-pci (driver_override, unbind, probe).  Returns
        the driver it was bound to before (None if none, or already vfio-pci)."""
        if not self.exists(bdf):
            raise PciError(f"PCI device {bdf} does not exist on this host")
        if self.is_bridge(bdf):
            raise PciError(f"PCI device {bdf} is a bridge; bridges cannot be passed through")
        old = self.driver(bdf)
        if old == VFIO_DRIVER:
            return None
        self._ensure_vfio_driver()
        dev = self.device_dir(bdf)
        # driver_override makes vfio-pci (and only it) match on the next probe.
        self._write(dev / "driver_override", VFIO_DRIVER)
        try:
            if old is not None:
                self._write(dev / "driver/unbind", bdf)
            self._write(self.sys / "bus/pci/drivers_probe", bdf)
            if not self._wait_driver(bdf, VFIO_DRIVER):
                raise PciError(f"PCI device {bdf} did not bind to {VFIO_DRIVER} "
                               f"(bound to {self.driver(bdf) or 'no driver'})")
        except PciError:
            # Leave the device as it was found, as far as the kernel lets us.
            self._restore(bdf, old)
            raise
        return old

    def release(self, bdf: str, rebind: str | None, probe: bool = False) -> None:
        """Take *bdf* away from vfio-pci; with *rebind*, bind it to that driver
        again; with only *probe*, let the kernel pick a driver for it."""
        if not self.exists(bdf):
            raise PciError(f"PCI device {bdf} does not exist on this host")
        if self.driver(bdf) not in (VFIO_DRIVER, None):
            raise PciError(f"PCI device {bdf} is not assignable: it is bound to {self.driver(bdf)}, "
                           f"not {VFIO_DRIVER}")
        self._restore(bdf, rebind)
        if probe and not rebind:
            self._write(self.sys / "bus/pci/drivers_probe", bdf)
        if rebind and not self._wait_driver(bdf, rebind):
            raise PciError(f"PCI device {bdf} was released but did not bind to {rebind} again")

    def _restore(self, bdf: str, driver: str | None) -> None:
        dev = self.device_dir(bdf)
        if self.driver(bdf) == VFIO_DRIVER:
            self._write(dev / "driver/unbind", bdf)
        # An empty override lets normal driver matching apply again.
        self._write(dev / "driver_override", "\n")
        if driver:
            target = self.sys / "bus/pci/drivers" / driver / "bind"
            if target.parent.is_dir():
                self._write(target, bdf)
            else:
                self._write(self.sys / "bus/pci/drivers_probe", bdf)
