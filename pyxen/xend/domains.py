"""The domain registry: ids, names, creation (from a config, or restored
from a save file), lookup and re-adoption.

Owns the host-wide invariants: names and uuids are unique, domain ids start
at 1 and are never reused while the host's state lives (the counter is
persisted before a QEMU is started), and at start-up every domain left in
the store is adopted, finished or rolled back — nothing lost, no duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import os

from ..config import sxp
from ..config.domain import DomainConfig
from ..config.errors import ConfigError
from ..config.xendconfig import XendConfig
from ..hypervisor.qemu import process
from ..paths import Paths
from ..store import Store, StoreError
from . import checkpoint
from .accel import Accelerator
from .domain import Domain
from .errors import Conflict, InvalidRequest, NoSuchDomain, XendError

log = logging.getLogger("pyxen.domains")


class Domains:
    def __init__(self, paths: Paths, config: XendConfig, store: Store, accel: Accelerator):
        self.paths = paths
        self.config = config
        self.store = store
        self.accel = accel
        self.by_uuid: dict[str, Domain] = {}
        self._create_lock = asyncio.Lock()

    # ---------------------------------------------------------------- lookup
    def all(self) -> list[Domain]:
        return sorted(self.by_uuid.values(), key=lambda d: d.domid)

    def lookup(self, ref) -> Domain:
        ref = str(ref)
        for d in self.by_uuid.values():
            if d.name == ref or d.uuid == ref:
                return d
        if ref.isdigit():
            for d in self.by_uuid.values():
                if d.domid == int(ref):
                    return d
        raise NoSuchDomain(ref)

    def remove(self, dom: Domain) -> None:
        if self.by_uuid.get(dom.uuid) is dom:
            del self.by_uuid[dom.uuid]

    # ------------------------------------------------------------------- ids
    def _alloc_domid(self) -> int:
        nxt = self.store.get_json("host/next-domid", 1)
        used = max((d.domid for d in self.by_uuid.values()), default=0)
        domid = max(int(nxt), used + 1, 1)
        self.store.put_json("host/next-domid", domid + 1)
        return domid

    # ---------------------------------------------------------------- create
    def _validate(self, cfg: DomainConfig) -> None:
        if cfg.name == "Domain-0" or cfg.name.isdigit():
            raise InvalidRequest(f"Invalid domain name {cfg.name!r}")
        for d in self.by_uuid.values():
            if d.name == cfg.name:
                raise Conflict(f"Domain '{cfg.name}' already exists with ID '{d.domid}'")
            if d.uuid == cfg.uuid:
                raise Conflict(f"Domain with UUID {cfg.uuid} already exists as '{d.name}'")
        files = []
        if cfg.builder == "linux":
            files.append(("kernel", cfg.kernel))
            if cfg.ramdisk:
                files.append(("ramdisk", cfg.ramdisk))
        for what, path in files:
            if not os.path.isfile(path):
                raise InvalidRequest(f"{what} image does not exist: {path}")
            if not os.access(path, os.R_OK):
                raise InvalidRequest(f"{what} image is not readable: {path}")
        if cfg.pci:
            raise InvalidRequest(f"PCI passthrough of {', '.join(p.bdf for p in cfg.pci)} is not available: "
                                 "this pyxen does not yet assign devices through VFIO")
        if cfg.cpus is not None:
            from .domain import host_cpus
            for spec in (cfg.cpus if isinstance(cfg.cpus, list) else [cfg.cpus]):
                host_cpus(spec)
        for disk in cfg.disks:
            if disk.target and disk.kind != "nbd" and not os.path.exists(disk.target):
                raise InvalidRequest(f"disk {disk.vdev}: {disk.target} does not exist")

    async def create(self, config_sxp: str, paused: bool = False) -> Domain:
        try:
            cfg = DomainConfig.from_sxp(sxp.from_string(config_sxp))
        except (ConfigError, sxp.SxpError) as e:
            raise InvalidRequest(f"invalid domain config: {e}") from None
        accel = await self.accel.get()
        dom = await self._launch(cfg, accel, paused)
        log.info("%s: started (domid %d, %s)", cfg.name, dom.domid, accel)
        return dom

    async def restore(self, path: str, paused: bool = False) -> Domain:
        """``xm restore``: a new domain (new id; same name, uuid and config)
        running on from the state in save file *path*.  The file is checked
        before anything starts, and left as it is."""
        if not isinstance(path, str) or not os.path.isabs(path):
            raise InvalidRequest(f"save file must be an absolute path, got {path!r}")
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(None, checkpoint.read_header, path)
        except checkpoint.SaveFileError as e:
            raise InvalidRequest(str(e)) from None
        try:
            cfg = DomainConfig.from_sxp(sxp.from_string(info.config))
        except (ConfigError, sxp.SxpError) as e:
            raise InvalidRequest(f"{path}: the saved domain config is invalid: {e}") from None
        accel = await self.accel.get()
        saved = info.meta.get("accel")
        if saved and saved != accel:
            raise InvalidRequest(f"{path} was saved from a {saved.upper()} guest; this host runs guests "
                                 f"under {accel.upper()}, which cannot continue it")
        dom = await self._launch(cfg, accel, paused, restore=info)
        log.info("%s: restored from %s (domid %d, %s)", cfg.name, path, dom.domid, accel)
        return dom

    async def _launch(self, cfg: DomainConfig, accel: str, paused: bool,
                      restore: checkpoint.SaveInfo | None = None) -> Domain:
        async with self._create_lock:
            self._validate(cfg)
            try:
                domid = self._alloc_domid()
                dom = Domain(self, cfg, domid)
                dom.accel = accel
                self.by_uuid[cfg.uuid] = dom
                dom.persist(config=True)
            except StoreError as e:
                self.by_uuid.pop(cfg.uuid, None)
                raise XendError(str(e)) from None
        try:
            async with dom.lock:
                await dom.start(paused, restore=restore)
        except BaseException as e:
            log.error("%s: %s failed: %s", cfg.name, "restore" if restore else "create", e)
            await dom.destroy(force=True)
            if isinstance(e, XendError):
                raise
            if isinstance(e, (OSError, StoreError)):
                raise XendError(f"{'restoring' if restore else 'creating'} domain {cfg.name} "
                                f"failed: {e}") from None
            raise
        return dom

    # ----------------------------------------------------------------- adopt
    async def adopt_all(self) -> None:
        uuids = sorted({k.split("/")[1] for k in self.store.keys("domains/") if k.count("/") == 2})
        for u in uuids:
            raw_cfg = self.store.get(f"domains/{u}/config")
            rec = self.store.get_json(f"domains/{u}/runtime")
            if raw_cfg is None or rec is None:
                log.error("domain %s: incomplete state record; setting it aside", u)
                for k in ("config", "runtime"):
                    if self.store.get(f"domains/{u}/{k}") is not None:
                        self.store.quarantine(f"domains/{u}/{k}", "incomplete record")
                continue
            try:
                cfg = DomainConfig.from_sxp(raw_cfg.decode())
                domid = int(rec["domid"])
            except (ConfigError, sxp.SxpError, KeyError, ValueError, UnicodeDecodeError) as e:
                log.error("domain %s: corrupt state record (%s); setting it aside", u, e)
                self.store.quarantine(f"domains/{u}/config", str(e))
                self.store.quarantine(f"domains/{u}/runtime", str(e))
                continue
            dom = Domain(self, cfg, domid)
            dom.state = rec.get("state", "running")
            dom.pid = rec.get("pid")
            dom.paused = bool(rec.get("paused"))
            dom.start_time = rec.get("start_time") or dom.start_time
            dom.shutdown_reason = rec.get("shutdown_reason")
            dom.accel = rec.get("accel", "tcg")
            dom.job = rec.get("job")
            self.by_uuid[u] = dom
            await self._adopt_one(dom)

    async def _adopt_one(self, dom: Domain) -> None:
        if dom.state in ("creating", "dying"):
            # Interrupted create or destroy: roll back / finish — never keep half a domain.
            log.info("%s: %s was interrupted; cleaning up", dom.name,
                     "create" if dom.state == "creating" else "destroy")
            if dom.pid and process.is_ours(dom.pid, dom.uuid):
                process.kill(dom.pid)
                await process.wait_exit(dom.pid, 5)
            await dom.destroy(force=True)
            return
        try:
            if await dom.adopt():
                await dom.recover_job()
                return
        except Exception as e:
            log.error("%s: cannot reconnect to QEMU pid %s: %s", dom.name, dom.pid, e)
            if dom.pid and process.alive(dom.pid):
                # Keep the record and the name: never start it a second time.
                dom.state = "running"
                return
        if dom.state in ("shutdown", "crashed") and dom.cfg:
            if not process.is_ours(dom.pid, dom.uuid):
                dom.pid = None
            log.info("%s: preserved %s domain kept", dom.name, dom.state)
            return
        if dom.job:
            # A save past its commit point ends with the domain gone anyway.
            await dom.recover_job()
            if dom.gone.is_set():
                return
        log.error("%s: QEMU (pid %s) went away while xend was not running", dom.name, dom.pid)
        await dom._qemu_died()

    async def detach_all(self) -> None:
        for d in list(self.by_uuid.values()):
            await d.detach()
