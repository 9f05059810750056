"""A fake sysfs and /dev for PCI passthrough tests (``PYXEN_SYSFS``,
``PYXEN_DEVFS``): the files and links :mod:`pyxen.hypervisor.pci` reads,
laid out as the kernel lays them out.

The tree is static: nothing happens when a test writes to ``unbind`` or
``drivers_probe``.  :meth:`FakeSysfs.kernel` gives a :class:`PciHost` whose
writes are also applied the way the kernel would, for tests of the
rebinding protocol.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..hypervisor.pci import PciHost

NIC_CLASS = 0x020000
BRIDGE_CLASS = 0x060400


class FakeSysfs:
    def __init__(self, root: Path, iommu: bool = True):
        self.root = Path(root)
        self.sys = self.root / "sys"
        self.dev = self.root / "dev"
        (self.sys / "bus/pci/devices").mkdir(parents=True, exist_ok=True)
        (self.sys / "bus/pci/drivers").mkdir(parents=True, exist_ok=True)
        (self.sys / "devices/pci0000:00").mkdir(parents=True, exist_ok=True)
        (self.sys / "kernel/iommu_groups").mkdir(parents=True, exist_ok=True)
        (self.sys / "bus/pci/drivers_probe").write_text("")
        (self.dev / "vfio").mkdir(parents=True, exist_ok=True)
        self.iommu = iommu
        # The driver the kernel would pick for a device with no override.
        self.native: dict[str, str] = {}

    @property
    def env(self) -> dict:
        return {"PYXEN_SYSFS": str(self.sys), "PYXEN_DEVFS": str(self.dev)}

    def host(self) -> PciHost:
        return PciHost(self.sys, self.dev)

    def add_driver(self, name: str) -> Path:
        d = self.sys / "bus/pci/drivers" / name
        d.mkdir(parents=True, exist_ok=True)
        for f in ("bind", "unbind", "new_id"):
            (d / f).touch()
        return d

    def add_device(self, bdf: str, driver: str | None = None, group: int | None = None,
                   cls: int = NIC_CLASS, vfio_node: bool = True) -> Path:
        real = self.sys / "devices/pci0000:00" / bdf
        real.mkdir(parents=True, exist_ok=True)
        (real / "class").write_text(f"{cls:#08x}\n")
        (real / "vendor").write_text("0x8086\n")
        (real / "device").write_text("0x10d3\n")
        (real / "driver_override").write_text("(null)\n")
        link = self.sys / "bus/pci/devices" / bdf
        if not link.exists():
            link.symlink_to(os.path.relpath(real, link.parent))
        if driver:
            self.bind(bdf, driver)
        if group is not None and self.iommu:
            self.put_in_group(bdf, group, vfio_node)
        return real

    def put_in_group(self, bdf: str, group: int, vfio_node: bool = True) -> None:
        real = self.sys / "devices/pci0000:00" / bdf
        g = self.sys / "kernel/iommu_groups" / str(group)
        (g / "devices").mkdir(parents=True, exist_ok=True)
        (g / "devices" / bdf).symlink_to(os.path.relpath(real, g / "devices"))
        (real / "iommu_group").symlink_to(os.path.relpath(g, real))
        if vfio_node:
            (self.dev / "vfio" / str(group)).touch()

    def bind(self, bdf: str, driver: str | None) -> None:
        real = self.sys / "devices/pci0000:00" / bdf
        link = real / "driver"
        if link.is_symlink():
            link.unlink()
            for d in (self.sys / "bus/pci/drivers").iterdir():
                if (d / bdf).is_symlink():
                    (d / bdf).unlink()
        if driver:
            d = self.add_driver(driver)
            link.symlink_to(os.path.relpath(d, real))
            (d / bdf).symlink_to(os.path.relpath(real, d))

    def kernel(self) -> PciHost:
        """A PciHost whose sysfs writes take effect, as the kernel's would."""
        fake = self

        class Simulated(PciHost):
            def _write(self, path: Path, text: str) -> None:
                super()._write(path, text)
                bdf = text.strip()
                name = path.name
                if name == "driver_override":
                    return
                if name == "unbind":
                    fake.bind(bdf, None)
                elif name == "bind":
                    fake.bind(bdf, path.parent.name)
                elif name == "drivers_probe":
                    override = (self.device_dir(bdf) / "driver_override").read_text().strip()
                    if override and override != "(null)":
                        if (self.sys / "bus/pci/drivers" / override).is_dir():
                            fake.bind(bdf, override)
                    else:
                        fake.bind(bdf, fake.native.get(bdf))

        return Simulated(self.sys, self.dev)
