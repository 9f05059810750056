"""Block hotplug (``xm block-attach``/``block-detach``): a virtio disk
added to or taken from a running guest, and kept in its config."""

from __future__ import annotations

import asyncio
import logging

from ...config.errors import ConfigError
from ...config.specs import disk_from_parts, disk_number
from ...hypervisor.qemu import argv as qargv
from ...hypervisor.qemu.monitor import QMPError, QmpTimeout
from .. import confine, durable
from ..errors import Conflict, InvalidRequest, XendError

log = logging.getLogger("pyxen.domain")


class BlockDevices:
    """Mixed into Domain: its disks while it runs."""

    async def block_attach(self, uname: str, vdev: str, mode: str, backend: str = "0") -> None:
        """xm block-attach: a new virtio disk in the running guest, kept in the config."""
        try:
            disk = disk_from_parts(uname, vdev, mode, backend or "0")
        except ConfigError as e:
            raise InvalidRequest(str(e)) from None
        if not disk.target:
            raise InvalidRequest(f"Invalid disk specifier {uname!r}: block-attach needs a target")
        if disk.devtype == "cdrom" or disk.ioemu:
            raise InvalidRequest(f"block-attach of {disk.vdev}: only plain disks can be hot-plugged")
        async with self.lock:
            self.require_live("block-attach")
            if any(d.vdev == disk.vdev for d in self.cfg.disks):
                raise Conflict(f"Domain {self.name} already has a device {disk.vdev}")
            # The reservations' lock: no create or other attach can take the
            # same disk between the guard's check and the config update.
            async with self.reservations.lock:
                self.reservations.check_disk_target(disk)
                self.reservations.check_sharing(self.name, [disk])
                # Persist, then act: on a full disk nothing is plugged.
                async with durable.change(self, "block-attach", config=True):
                    self.cfg.disks.append(disk)
            try:
                await self._plug_disk(disk)
            except XendError:
                self.cfg.disks.remove(disk)
                self.persist_config_quietly()
                raise
            log.info("%s: attached %s as %s (%s)", self.name, disk.uname, disk.vdev, disk.mode)

    async def _plug_disk(self, disk) -> None:
        """The disk's nodes and device in QEMU; on failure nothing is left."""
        mon = self.monitor
        added: list[str] = []
        try:
            # QEMU opens no path: the image and each backing layer come
            # as descriptors (xend/confine.py).
            fdset, backing = await confine.add_disk_fds(mon, disk)
            for node in qargv.disk_nodes(disk, fdset, backing if fdset is not None else None):
                await mon.blockdev_add(node)
                added.append(node["node-name"])
            await mon.device_add(qargv.disk_device_props(disk))
        except (QMPError, QmpTimeout, OSError, InvalidRequest) as e:
            for node in reversed(added):
                try:
                    await mon.blockdev_del(node)
                except Exception:
                    pass
            await self._drop_disk_fd(disk.vdev)
            raise XendError(f"block-attach {disk.uname} as {disk.vdev} failed: {e}") from None

    def _find_disk(self, ref: str):
        for d in self.cfg.disks:
            if d.vdev == ref:
                return d
        if ref.isdigit():
            for d in self.cfg.disks:
                try:
                    if disk_number(d.vdev) == int(ref):
                        return d
                except ConfigError:
                    pass
        raise InvalidRequest(f"Device {ref} not connected to domain {self.name}")

    async def block_detach(self, ref: str, force: bool = False, timeout: float = 30.0) -> None:
        """xm block-detach: the guest lets go of the disk, then QEMU drops it.

        Unplugging needs the guest's consent (ACPI eject); -f still waits for
        it but then drops the disk from the config even if the guest refused.
        """
        async with self.lock:
            self.require_live("block-detach")
            disk = self._find_disk(str(ref))
            overlay = self.check_detach(disk)        # refused while a snapshot needs it
            top = await self.overlay_node(disk.vdev) if overlay is not None else None
            dev_id = f"vbd-{disk.vdev}"
            gone = self.unplugs.expect(dev_id)
            mon = self.monitor
            try:
                await mon.device_del(dev_id)
                await asyncio.wait_for(gone.wait(), timeout)
            except asyncio.TimeoutError:
                if not force:
                    raise XendError(f"Domain {self.name} did not release {disk.vdev} within {timeout:.0f} s "
                                    "(use -f to drop it from the configuration anyway)") from None
                log.warning("%s: guest did not release %s; dropped from the config (-f)", self.name, disk.vdev)
            except (QMPError, QmpTimeout) as e:
                if not force:
                    raise XendError(f"block-detach {disk.vdev} failed: {e}") from None
            finally:
                self.unplugs.forget(dev_id)
            # A live snapshot's overlay node first (it uses the others), then
            # the image's nodes, then those of its backing layers, as far as
            # there are any (their number is not kept across xend restarts).
            if top is not None:
                try:
                    await mon.blockdev_del(top)
                except (QMPError, QmpTimeout) as e:
                    log.warning("%s: blockdev-del %s: %s", self.name, top, e)
            for i, node in enumerate(qargv.disk_node_names(disk.vdev, confine.MAX_LAYERS)):
                try:
                    await mon.blockdev_del(node)
                except (QMPError, QmpTimeout) as e:
                    if i < 2:
                        log.warning("%s: blockdev-del %s: %s", self.name, node, e)
                    elif node.startswith("b"):
                        break
            await self._drop_disk_fd(disk.vdev)
            if overlay is not None:
                try:
                    await self.drop_overlay_fd(disk.vdev)
                except (QMPError, QmpTimeout) as e:
                    log.warning("%s: cannot drop the overlay descriptor of %s: %s", self.name, disk.vdev, e)
            # The guest let go already: if the record cannot say so, the
            # disk is plugged back in, so QEMU matches the record again.
            async with durable.change(self, "block-detach", config=True) as ch:
                ch.undo(lambda: self._plug_disk(disk))
                self.cfg.disks.remove(disk)
            log.info("%s: detached %s (%s)", self.name, disk.vdev, disk.uname)
            if overlay is not None:
                await self.merge_overlay(disk.target, overlay)

    async def _drop_disk_fd(self, vdev: str) -> None:
        try:
            await confine.remove_disk_fd(self.monitor, vdev)
        except (QMPError, QmpTimeout) as e:
            log.warning("%s: cannot drop the descriptor of %s: %s", self.name, vdev, e)
