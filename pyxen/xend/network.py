"""xend's networking: the network script, each vif's host side, and vnets.

A vif's host side is a tap (``vif<domid>.<devid>`` or its ``vifname``) that
xend creates before QEMU starts (QEMU opens it by name), then hands to the
vif script (``online``), then limits (``rate=``).  Going offline runs the
same steps backwards.  The host-wide ``network-script`` runs ``start`` when
xend starts and ``stop`` when it stops, unless domains are still running
(they keep their network across an xend restart).

vnets are host-wide definitions kept in the store (``vnets/<id>``) and set
up again whenever xend starts, so a domain arriving by restore or
migration finds its vnet's bridge here if the vnet is defined on this host.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from ..config import sxp
from ..config.specs import parse_rate
from ..config.xendconfig import XendConfig
from ..net import links, scripts, shaping
from ..net.links import LinkError
from ..net.scripts import ScriptError
from ..net.vnet import VnetConfig, VnetError
from .. import storekeys
from ..paths import Paths
from ..store import Store, StoreError
from .errors import Conflict, InvalidRequest, XendError

log = logging.getLogger("pyxen.network")

# vif settings a vif script sees in its environment (Xen read them from xenstore).
VIF_ENV_KEYS = ("mac", "bridge", "ip", "vifname", "rate", "model", "type")


async def _sync(fn, *args):
    """Run a blocking netlink call off the event loop; kernel refusals become LinkError."""
    def call():
        try:
            return fn(*args)
        except NetlinkError as e:
            raise LinkError(f"{getattr(fn, '__name__', 'netlink')}: {e.args[-1]}") from None
    return await asyncio.get_running_loop().run_in_executor(None, call)


class HostNetwork:
    def __init__(self, paths: Paths, config: XendConfig, store: Store):
        self.paths = paths
        self.config = config
        self.store = store
        self.vnets: dict[int, VnetConfig] = {}
        self.lock = asyncio.Lock()
        # Failures at start xend lives with, for `xend start` to print.
        self.problems: list[str] = []

    # ------------------------------------------------------------ basics
    @property
    def run_dir(self) -> Path:
        return self.paths.run / "net"

    @property
    def timeout(self) -> float:
        return float(self.config["device-create-timeout"])

    def _env(self, extra: dict) -> dict:
        return scripts.environment({"PYXEN_ROOT": str(self.paths.root), "PYXEN_RUN": str(self.run_dir),
                                    "XEN_SCRIPT_DIR": str(self.paths.scripts), **extra})

    def _script(self, setting: str) -> tuple[Path, list[str]]:
        name, args = scripts.split(setting)
        return scripts.resolve(name, self.paths.scripts), args

    # ---------------------------------------------------- network script
    async def start(self) -> None:
        """xend is starting: run network-script start, set up the vnets."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        setting = self.config["network-script"]
        if setting:
            try:
                path, args = self._script(setting)
                await scripts.run(path, "start", args, self._env({}), self.timeout)
                log.info("network script %s started", setting)
            except ScriptError as e:
                # xend stays up (domains without vifs, xm itself) and says why.
                log.error("network-script %s: %s", setting, e)
                self.problems.append(f"(network-script {setting}) start failed: {e}")
        await self.restore_vnets()

    async def stop(self, domains_left: int) -> None:
        setting = self.config["network-script"]
        if not setting:
            return
        if domains_left:
            log.info("network-script %s not stopped: %d domain(s) still running use it", setting, domains_left)
            return
        try:
            path, args = self._script(setting)
            await scripts.run(path, "stop", args, self._env({}), self.timeout)
            log.info("network script %s stopped", setting)
        except ScriptError as e:
            log.error("network-script %s stop: %s", setting, e)

    # -------------------------------------------------------------- vifs
    @staticmethod
    def vif_name(domid: int, devid: int, spec: dict) -> str:
        return spec.get("vifname") or f"vif{domid}.{devid}"

    def vif_script(self, spec: dict) -> tuple[Path, list[str]]:
        """The vif's own script= (no arguments), else xend's vif-script setting."""
        try:
            if spec.get("script"):
                return scripts.resolve(spec["script"], self.paths.scripts), []
            return self._script(self.config["vif-script"] or "vif-bridge")
        except ScriptError as e:
            raise InvalidRequest(str(e)) from None

    def _vif_env(self, dom, devid: int, spec: dict, name: str) -> dict:
        env = {"vif": name, "domid": dom.domid, "devid": devid, "domname": dom.name, "uuid": dom.uuid,
               "XENBUS_PATH": f"backend/vif/{dom.domid}/{devid}", "XENBUS_TYPE": "vif", "type_if": "vif"}
        env.update({k: spec[k] for k in VIF_ENV_KEYS if spec.get(k)})
        return self._env(env)

    async def vif_up(self, dom, devid: int, spec: dict) -> tuple[str, int | None]:
        """Create vif *devid*'s tap and bring it online; its (name, MTU).  On failure nothing is left."""
        name = self.vif_name(dom.domid, devid, spec)
        path, args = self.vif_script(spec)
        try:
            # Owned by an unprivileged QEMU's uid, so it can attach on hotplug.
            await _sync(links.create_tap, name, links.BACKEND_MAC, getattr(dom, "qemu_ident", None))
        except LinkError as e:
            raise XendError(f"Device {devid} (vif) could not be connected. {e}") from None
        try:
            await scripts.run(path, "online", args, self._vif_env(dom, devid, spec, name), self.timeout)
            if spec.get("rate"):
                bps, interval = parse_rate(spec["rate"])
                await _sync(shaping.limit, name, bps, interval)
            mtu = await _sync(links.mtu, name)
        except (ScriptError, LinkError) as e:
            await self.vif_down(dom, devid, spec)
            raise XendError(f"Device {devid} (vif) could not be connected. {e}") from None
        except BaseException:
            await self.vif_down(dom, devid, spec)
            raise
        log.info("%s: vif %d online as %s (%s)", dom.name, devid, name, path.name)
        return name, mtu

    async def vif_down(self, dom, devid: int, spec: dict) -> None:
        """Take vif *devid* offline and remove its tap (quietly tolerant of half-made ones)."""
        name = self.vif_name(dom.domid, devid, spec)
        try:
            await _sync(shaping.clear, name)
        except Exception as e:
            log.warning("%s: clearing the rate limit of %s: %s", dom.name, name, e)
        try:
            path, args = self.vif_script(spec)
            await scripts.run(path, "offline", args, self._vif_env(dom, devid, spec, name), self.timeout)
        except (ScriptError, XendError) as e:
            log.warning("%s: vif %d offline: %s", dom.name, devid, e)
        try:
            if await _sync(links.delete, name):
                log.info("%s: vif %d (%s) removed", dom.name, devid, name)
        except LinkError as e:
            log.error("%s: %s", dom.name, e)

    # ------------------------------------------------------------- vnets
    def _underlay(self) -> str:
        dev = self.config["vnet-dev"] or links.default_route_dev()
        if not dev:
            raise InvalidRequest("no interface to carry vnets: set (vnet-dev <interface>) in xend-config.sxp")
        return dev

    def _apply(self, v: VnetConfig) -> None:
        """Bridge + VXLAN for vnet *v* (blocking; idempotent)."""
        created = links.ensure_bridge(v.bridge)
        try:
            links.ensure_vxlan(v.vnetif, v.id, self.config["vnet-group"], self.config["vnet-port"],
                               self._underlay(), self.config["vnet-peers"].split(), v.bridge)
        except (LinkError, XendError):
            if created:
                links.delete(v.bridge)
            raise

    async def restore_vnets(self) -> None:
        for key in self.store.keys(storekeys.VNET_PREFIX):
            raw = self.store.get(key)
            try:
                v = VnetConfig.parse(raw.decode(), key)
            except (VnetError, UnicodeDecodeError, AttributeError) as e:
                log.error("vnet %s: corrupt record (%s); setting it aside", key, e)
                self.store.quarantine(key, str(e))
                continue
            self.vnets[v.id] = v
            try:
                await _sync(self._apply, v)
                log.info("vnet %d set up: bridge %s, %s", v.id, v.bridge, v.vnetif)
            except Exception as e:     # one broken vnet must not keep xend from starting
                log.error("vnet %d: cannot set up: %s", v.id, e)
                self.problems.append(f"vnet {v.id}: cannot set up: {e}")

    async def vnet_create(self, text: str) -> VnetConfig:
        try:
            v = VnetConfig.parse(text)
        except VnetError as e:
            raise InvalidRequest(str(e)) from None
        async with self.lock:
            if v.id in self.vnets:
                raise Conflict(f"vnet {v.id} already exists")
            for other in self.vnets.values():
                for mine, theirs in ((v.bridge, other.bridge), (v.vnetif, other.vnetif)):
                    if mine == theirs:
                        raise Conflict(f"vnet {other.id} already uses {mine}")
            if await _sync(links.kind, v.vnetif) is not None:
                raise Conflict(f"interface {v.vnetif} already exists")
            try:
                await _sync(self._apply, v)
            except LinkError as e:
                await _sync(links.delete, v.vnetif)
                raise XendError(f"cannot create vnet {v.id}: {e}") from None
            except XendError:
                await _sync(links.delete, v.vnetif)
                raise
            try:
                self.store.put(storekeys.vnet(str(v.id)), sxp.to_string(v.to_sxp()).encode())
            except StoreError as e:
                await _sync(self._remove, v)
                raise XendError(str(e)) from None
            self.vnets[v.id] = v
        log.info("vnet %d created: bridge %s, %s (VNI %d)", v.id, v.bridge, v.vnetif, v.id)
        return v

    @staticmethod
    def _remove(v: VnetConfig) -> None:
        links.delete(v.vnetif)
        if not links.bridge_ports(v.bridge):
            links.delete(v.bridge)

    def lookup_vnet(self, ref) -> VnetConfig:
        try:
            vid = int(str(ref), 0)
        except ValueError:
            raise InvalidRequest(f"vnet id {ref!r} is not a number") from None
        v = self.vnets.get(vid)
        if v is None:
            raise InvalidRequest(f"vnet {ref} does not exist")
        return v

    async def vnet_delete(self, ref) -> None:
        async with self.lock:
            v = self.lookup_vnet(ref)
            users = [p for p in await _sync(links.bridge_ports, v.bridge) if p != v.vnetif]
            if users:
                raise Conflict(f"vnet {v.id} is in use: {' '.join(users)} on bridge {v.bridge}")
            self.store.delete(storekeys.vnet(str(v.id)))
            del self.vnets[v.id]
            try:
                await _sync(self._remove, v)
            except LinkError as e:
                log.error("vnet %d: %s", v.id, e)
        log.info("vnet %d deleted", v.id)
