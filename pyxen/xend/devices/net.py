"""Network hotplug (``xm network-attach``/``network-detach``) and the
device ids of a domain's vifs."""

from __future__ import annotations

import asyncio
import logging

from ...hypervisor.qemu import argv as qargv
from ...hypervisor.qemu.monitor import QMPError, QmpTimeout
from .. import durable
from ..errors import Conflict, InvalidRequest, XendError

log = logging.getLogger("pyxen.domain")


class NetDevices:
    """Mixed into Domain: its vifs while it runs."""

    def vifs(self) -> list[tuple[int, dict]]:
        """(devid, spec) of each vif; devids are 0.. unless hotplug made gaps."""
        if len(self.vif_devids) != len(self.cfg.vifs):
            self.vif_devids = list(range(len(self.cfg.vifs)))
        return list(zip(self.vif_devids, self.cfg.vifs))

    async def network_attach(self, spec: dict) -> int:
        """Plug a new vif into the running guest; returns its devid."""
        async with self.lock:
            self.require_live("network-attach")
            if self.paused:
                raise Conflict(f"Domain {self.name} is paused; unpause it to attach a device")
            spec = dict(spec)
            names = {self.net.vif_name(self.domid, d, s) for d, s in self.vifs()}
            devid = max(max(self.vif_devids, default=-1) + 1, self.vif_next_devid)
            self.vif_next_devid = devid + 1
            name = self.net.vif_name(self.domid, devid, spec)
            if name in names:
                raise Conflict(f"Domain {self.name} already has a vif named {name}")
            with self.reservations.mac_for(spec, self):
                # Recorded before it is plugged (persist, then act): on a
                # full disk nothing is plugged; a failed plug is taken out
                # of the record again.
                async with durable.change(self, "network-attach", config=True):
                    self.cfg.vifs.append(spec)
                    self.vif_devids.append(devid)
                try:
                    tap = await self._plug_vif(devid, spec)
                except XendError:
                    i = self.vif_devids.index(devid)
                    del self.cfg.vifs[i]
                    del self.vif_devids[i]
                    self.persist_config_quietly()
                    raise
            log.info("%s: vif %d attached (%s, %s)", self.name, devid, tap, spec["mac"])
            return devid

    async def _plug_vif(self, devid: int, spec: dict) -> str:
        """The host side and the guest's NIC of vif *devid*; its tap.  On
        failure nothing is left."""
        mon = self.monitor
        tap, mtu = await self.net.vif_up(self, devid, spec)
        try:
            await mon.netdev_add(qargv.netdev_props(devid, tap))
            try:
                await mon.device_add(qargv.nic_props(devid, spec, self.cfg.builder == "hvm", mtu))
            except (QMPError, QmpTimeout):
                await self._netdev_del(devid)
                raise
        except (QMPError, QmpTimeout) as e:
            await self.net.vif_down(self, devid, spec)
            raise XendError(f"Device {devid} (vif) could not be connected. {e}") from None
        self.vifs_up.add(devid)
        return tap

    async def network_detach(self, ref, force: bool = False) -> None:
        """Unplug vif *ref* (its devid): the guest releases the NIC, then its host side goes."""
        async with self.lock:
            self.require_live("network-detach")
            try:
                devid = int(str(ref))
            except ValueError:
                raise InvalidRequest(f"Invalid device id {ref!r}") from None
            if devid not in self.vif_devids:
                raise InvalidRequest(f"Device {devid} not connected")
            i = self.vif_devids.index(devid)
            spec = self.cfg.vifs[i]
            nic = f"nic{devid}"
            gone = self.unplugs.expect(nic)
            try:
                await self.monitor.device_del(nic)
                limit = 5 if force else self.config["device-destroy-timeout"]
                try:
                    await asyncio.wait_for(gone.wait(), limit)
                except asyncio.TimeoutError:
                    if not force:
                        raise XendError(f"Device {devid} (vif) could not be disconnected: the guest did not "
                                        f"release it within {limit} s (xm network-detach -f forces it)") from None
                    log.warning("%s: guest kept vif %d; removing its backend anyway (-f)", self.name, devid)
            except (QMPError, QmpTimeout) as e:
                if not force:
                    raise XendError(f"Device {devid} (vif) could not be disconnected: {e}") from None
            finally:
                self.unplugs.forget(nic)
            await self._netdev_del(devid)
            await self.net.vif_down(self, devid, spec)
            # The guest let go already: if the record cannot say so, the
            # vif is plugged back in, so QEMU matches the record again.
            async with durable.change(self, "network-detach", config=True) as ch:
                ch.undo(lambda: self._plug_vif(devid, spec))
                del self.cfg.vifs[i]
                del self.vif_devids[i]
                self.vifs_up.discard(devid)
            log.info("%s: vif %d detached", self.name, devid)

    async def _netdev_del(self, devid: int) -> None:
        try:
            await self.monitor.netdev_del(f"vif{devid}")
        except (QMPError, QmpTimeout) as e:
            log.warning("%s: netdev_del vif%d: %s", self.name, devid, e)
