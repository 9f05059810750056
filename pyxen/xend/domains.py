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
import time

from .. import storekeys
from ..config import hvmopts as hvmcfg
from ..config import sxp
from ..config.domain import DomainConfig
from ..config.errors import ConfigError
from ..config.xendconfig import XendConfig
from ..hypervisor.qemu import process
from ..paths import Paths
from ..store import Store, StoreError
from . import checkpoint, features, saving  # noqa: F401  (saving registers the save job's recovery)
from . import migration  # noqa: F401  (registers the migrate job's recovery)
from . import storagemigrate, twins
from .accel import Accelerator
from .domain import Domain
from .errors import Conflict, InvalidRequest, NoSuchDomain, XendError
from .host import dom0_memory_mib
from .jobs import Job
from .lifecycle import State
from .network import HostNetwork
from .reservations import Reservations
from .resources import host_cpus, sedf_record
from .services import DomainServices

log = logging.getLogger("pyxen.domains")


class Domains:
    def __init__(self, paths: Paths, config: XendConfig, store: Store, accel: Accelerator,
                 net: HostNetwork | None = None):
        self.paths = paths
        self.config = config
        self.store = store
        self.accel = accel
        self.net = net or HostNetwork(paths, config, store)
        self.by_uuid: dict[str, Domain] = {}
        # The other copy of a domain migrating to this same host: the
        # arriving twin until the commit, then the superseded source until
        # its QEMU is gone (twins.py).  Never listed or looked up, but
        # holding host resources (memory, taps, disks) all the same.
        self.shadows: list[Domain] = []
        self.reservations = Reservations(self.everyone)
        self.subscribers: set[asyncio.Queue] = set()
        # (direction "out"/"in", result "ok"/"failed") -> count, and stream
        # bytes per direction, since xend started (GET /metrics).
        self.migrations: dict[tuple[str, str], int] = {}
        self.migration_bytes: dict[str, int] = {"out": 0, "in": 0}
        self.cluster = None         # a ClusterNode when xend-cluster-etcd is set (daemon.serve)

    def services(self) -> DomainServices:
        """What a Domain of this registry works with."""
        return DomainServices(store=self.store, paths=self.paths, config=self.config, net=self.net,
                              reservations=self.reservations, emit=self.emit, remove=self.remove,
                              create=self.create_config, count_migration=self.count_migration,
                              cluster=self.cluster)

    def count_migration(self, direction: str, ok: bool, nbytes: int = 0) -> None:
        key = (direction, "ok" if ok else "failed")
        self.migrations[key] = self.migrations.get(key, 0) + 1
        self.migration_bytes[direction] += nbytes

    # ---------------------------------------------------------------- events
    def emit(self, kind: str, dom: Domain, **extra) -> None:
        """Tell every event-stream subscriber about a domain's change."""
        if not self.subscribers:
            return
        ev = {"time": time.time(), "event": kind, "domid": dom.domid, "name": dom.name, "uuid": dom.uuid,
              "state": dom.flags() if kind != "destroyed" else "-----d", "lifecycle": dom.state, **extra}
        for q in list(self.subscribers):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:
                pass        # a stalled client loses events, xend does not block

    def emit_raw(self, ev: dict) -> None:
        """Publish an event that is not one domain's (the cluster's)."""
        for q in list(self.subscribers):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:
                pass

    # ---------------------------------------------------------------- lookup
    def everyone(self) -> list[Domain]:
        """Every domain object of this host, shadows of a same-host
        migration included (what reservations and memory count)."""
        return [*self.by_uuid.values(), *self.shadows]

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
        if dom in self.shadows:
            self.shadows.remove(dom)
        if dom.superseded:
            twins.replaced(self.by_uuid.get(dom.uuid), dom)

    # ------------------------------------------------------- reservations
    def used_macs(self) -> set[str]:
        return self.reservations.used_macs()

    def mac_for(self, spec: dict, dom: Domain):
        return self.reservations.mac_for(spec, dom)

    # ------------------------------------------------------------------- ids
    def _alloc_domid(self) -> int:
        used = max((d.domid for d in self.everyone()), default=0)
        # Compare-and-swap: two allocators sharing the store never hand out one domid twice.
        nxt = self.store.update_json(storekeys.next_domid(self.store.host),
                                     lambda n: max(int(n or 1), used + 1, 1) + 1, default=1)
        return nxt - 1

    # ---------------------------------------------------------------- create
    def check_name_free(self, name: str, owner: Domain | None = None) -> None:
        self.reservations.check_name_free(name, owner)

    def _used_memory(self) -> int:
        return sum(max(d.cfg.memory, d.cfg.maxmem or 0) for d in self.everyone() if d.pid or
                   d.state == State.CREATING)

    def free_memory(self) -> int:
        """MiB a new domain may still have here (what placement compares)."""
        return max(0, dom0_memory_mib() - self.config["dom0-min-mem"] - self._used_memory())

    def _check_memory(self, cfg: DomainConfig) -> None:
        """Refuse up front a domain the host cannot hold (never OOM later)."""
        need = max(cfg.memory, cfg.maxmem or 0)
        used = self._used_memory()
        floor = self.config["dom0-min-mem"]
        free = dom0_memory_mib() - floor - used
        if need > free:
            raise InvalidRequest(f"Not enough memory for domain {cfg.name}: it needs {need} MiB, "
                                 f"{max(free, 0)} MiB are free for domains (host {dom0_memory_mib()} MiB, "
                                 f"dom0-min-mem {floor} MiB, domains {used} MiB)")

    def _validate(self, cfg: DomainConfig, source: Domain | None = None) -> None:
        """The checks of a create; for the twin of a same-host migration
        (*source*: the copy it replaces) the source's name, uuid, disks and
        devices are not a conflict, but its taps' names are."""
        self.check_name_free(cfg.name, owner=source)
        for d in self.everyone():
            if d.uuid == cfg.uuid and d is not source:
                raise Conflict(f"Domain with UUID {cfg.uuid} already exists as '{d.name}'")
        self._check_memory(cfg)
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
        # PCI devices (each held by one domain, the host ready for VFIO), vTPMs.
        features.check(cfg, [d for d in self.everyone() if d is not source])
        if cfg.cpus is not None:
            for spec in (cfg.cpus if isinstance(cfg.cpus, list) else [cfg.cpus]):
                host_cpus(spec)
        vdevs = set()
        for disk in cfg.disks:
            if disk.vdev in vdevs:
                raise InvalidRequest(f"disk {disk.uname}: virtual device {disk.vdev} is used twice")
            vdevs.add(disk.vdev)
            self.check_disk_target(disk)
        if cfg.builder == "hvm":
            cd = hvmcfg.cdrom_disk(cfg.hvm)
            if cd is not None:
                self.check_disk_target(cd)
        names: set[str] = set()
        taken = {self.net.vif_name(d.domid, devid, v): d.name for d in self.everyone()
                 for devid, v in d.vifs()}
        for devid, v in enumerate(cfg.vifs):
            self.net.vif_script(v)          # the script must exist before anything is made
            name = v.get("vifname")
            if name and name in names:
                raise InvalidRequest(f"vif {devid}: vifname {name} is used twice in domain {cfg.name}")
            if name and name in taken:
                hint = (" (a migration to the same host gives the new copy new taps: its vifs must not "
                        "name theirs with vifname=)" if source is not None else "")
                raise Conflict(f"vif {devid}: vifname {name} is in use by domain {taken[name]}{hint}")
            names.add(name)
        self.reservations.check_sharing(cfg.name, cfg.disks, exclude=source)

    def check_disk_target(self, disk) -> None:
        self.reservations.check_disk_target(disk)

    def exported_disks(self, exclude=None) -> list:
        return self.reservations.exported_disks(exclude)

    def check_sharing(self, name: str, disks: list) -> None:
        self.reservations.check_sharing(name, disks)

    @staticmethod
    def parse(config_sxp: str) -> DomainConfig:
        try:
            return DomainConfig.from_sxp(sxp.from_string(config_sxp))
        except (ConfigError, sxp.SxpError) as e:
            raise InvalidRequest(f"invalid domain config: {e}") from None

    async def create(self, config_sxp: str, paused: bool = False) -> Domain:
        return await self.create_config(self.parse(config_sxp), paused)

    async def create_config(self, cfg: DomainConfig, paused: bool = False) -> Domain:
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

    def same_host_source(self, uuid: str, migration_id: str | None) -> Domain | None:
        """The domain of this host that an arriving migration comes from,
        if it comes from this host: the one under *uuid* whose migration
        job carries the same id (a random one each migration)."""
        d = self.by_uuid.get(uuid)
        if d is not None and migration_id and d.job and d.job.get("op") == "migrate" \
                and d.job.get("id") == migration_id:
            return d
        return None

    async def prepare_incoming(self, cfg: DomainConfig, accel: str, machine: str,
                               migration_id: str | None = None) -> Domain:
        """A migration arriving: the domain, checked like a create (name,
        uuid, memory, disks, kernel, vif scripts), with a QEMU waiting for
        the stream.  State ``incoming`` until the source commits; an xend
        restart meanwhile rolls it back.  From this same host (its source
        is here, *migration_id* says so) it is the source's twin: same
        name and uuid, a new domid, its record apart until the commit."""
        await self._check_accel(cfg, accel)
        source = self.same_host_source(cfg.uuid, migration_id)
        if source is not None:
            twins.refuse_unsupported(cfg, False)
        return await self._launch(cfg, accel, True, machine=machine, source=source)

    async def check_incoming(self, cfg: DomainConfig, accel: str) -> None:
        """prepare_incoming's checks, making nothing: an early migration
        (relocation.py) refuses what it can before the first byte moves;
        prepare_incoming checks again as it reserves."""
        await self._check_accel(cfg, accel)
        async with self.reservations.lock:
            self._validate(cfg)

    async def _check_accel(self, cfg: DomainConfig, accel: str) -> None:
        mine = await self.accel.get()
        if accel != mine:
            raise InvalidRequest(f"domain {cfg.name} runs under {accel.upper()} on the source; this host "
                                 f"runs guests under {mine.upper()}, which cannot continue it")

    async def _launch(self, cfg: DomainConfig, accel: str, paused: bool,
                      restore: checkpoint.SaveInfo | None = None, machine: str | None = None,
                      source: Domain | None = None) -> Domain:
        incoming = machine is not None
        what = "restore" if restore else ("incoming migration" if incoming else "create")
        async with self.reservations.lock:
            self._validate(cfg, source)
            if self.cluster is not None:
                # The domain lock (an arriving migration's stays the source's
                # until the source's commit hands it over).
                self.cluster.admit(cfg, incoming)
            # MACs go into the config before it is persisted, so they stay the
            # same across reboot, save/restore and migration.
            self.reservations.assign_macs(cfg, exclude=source)
            dom = None
            try:
                domid = self._alloc_domid()
                dom = Domain(self.services(), cfg, domid)
                dom.accel = accel
                if incoming:
                    dom.state = State.INCOMING
                if source is not None:
                    twins.prepare(dom, source)
                    self.shadows.append(dom)
                else:
                    self.by_uuid[cfg.uuid] = dom
                dom.persist(config=True)
            except StoreError as e:
                if dom is not None and dom in self.shadows:
                    self.shadows.remove(dom)
                else:
                    self.by_uuid.pop(cfg.uuid, None)
                if self.cluster is not None and not incoming:
                    self.cluster.released(cfg.uuid)
                raise XendError(str(e)) from None
        try:
            async with dom.lock:
                await dom.start(paused, restore=restore, machine=machine)
        except BaseException as e:
            log.error("%s: %s failed: %s", cfg.name, what, e)
            await dom.destroy(force=True)
            if isinstance(e, XendError):
                raise
            if isinstance(e, (OSError, StoreError)):
                raise XendError(f"{what} of domain {cfg.name} failed: {e}") from None
            raise
        if incoming:
            return dom          # announced when the source commits
        self.emit("created", dom)
        dom.announce()
        return dom

    # ----------------------------------------------------------------- adopt
    async def adopt_all(self) -> None:
        host = self.store.host
        # The arriving copy of a same-host migration that xend left before
        # the commit goes first: its source (adopted below) runs on.
        await twins.roll_back_arrivals(self)
        # This host's domains are those with a runtime record here; a config
        # whose domain has no record on any host is a leftover of a crash.
        hosts = {storekeys.host_of(k) for k in self.store.keys(storekeys.HOSTS_PREFIX)}
        elsewhere = {storekeys.uuid_of_runtime(h, k) for h in hosts - {host}
                     for k in self.store.keys(storekeys.runtime_prefix(h))}
        leftovers = {u for k in self.store.keys(storekeys.CONFIG_PREFIX)
                     if (u := storekeys.uuid_of_config(k)) and u not in elsewhere}
        if self.cluster is not None:
            # In a cluster a config without a runtime record is anybody's
            # (a failover about to start it, a host that died mid-create):
            # only one whose lock names this host is a leftover of ours.
            leftovers = {u for u in leftovers if self.cluster.lock.owner(u) == self.cluster.name}
        uuids = sorted({u for k in self.store.keys(storekeys.runtime_prefix(host))
                        if (u := storekeys.uuid_of_runtime(host, k))} | leftovers)
        for u in uuids:
            cfg_key, rt_key = storekeys.config(u), storekeys.runtime(host, u)
            raw_cfg = self.store.get(cfg_key)
            rec = self.store.get_json(rt_key)
            if raw_cfg is None or rec is None:
                log.error("domain %s: incomplete state record; setting it aside", u)
                for k in (cfg_key, rt_key):
                    if self.store.get(k) is not None:
                        self.store.quarantine(k, "incomplete record")
                continue
            try:
                cfg = DomainConfig.from_sxp(raw_cfg.decode())
                domid = int(rec["domid"])
            except (ConfigError, sxp.SxpError, KeyError, ValueError, UnicodeDecodeError) as e:
                log.error("domain %s: corrupt state record (%s); setting it aside", u, e)
                self.store.quarantine(cfg_key, str(e))
                self.store.quarantine(rt_key, str(e))
                continue
            dom = self.from_record(cfg, domid, rec)
            self.by_uuid[u] = dom
            dom.announced = True
            await self._adopt_one(dom)
        # Disks a cut-off incoming storage migration created (after the
        # domains: an interrupted arrival has just been rolled back).
        storagemigrate.recover(self.paths.lib, {u for u, d in self.by_uuid.items() if d.state == State.RUNNING})

    def from_record(self, cfg: DomainConfig, domid: int, rec: dict) -> Domain:
        """The domain an earlier xend recorded (not yet connected to QEMU)."""
        dom = Domain(self.services(), cfg, domid)
        dom.load_state(rec.get("state", "running"))
        dom.pid = rec.get("pid")
        dom.paused = bool(rec.get("paused"))
        dom.start_time = rec.get("start_time") or dom.start_time
        dom.shutdown_reason = rec.get("shutdown_reason")
        dom.shutdown_requested = rec.get("shutdown_requested")
        dom.accel = rec.get("accel", "tcg")
        if "sedf" in rec:
            dom.sedf = sedf_record(rec["sedf"])
        try:
            devids = rec.get("vif_devids")
            if isinstance(devids, list) and len(devids) == len(cfg.vifs):
                dom.vif_devids = [int(x) for x in devids]
            dom.vif_next_devid = int(rec.get("vif_next_devid") or 0)
            up = rec.get("vifs_up")
            # A record from before vifs_up was kept: every vif was brought up.
            dom.vifs_up = {int(x) for x in up} if isinstance(up, list) else {d for d, _ in dom.vifs()}
        except (TypeError, ValueError) as e:
            log.error("%s: bad vif record (%s); assuming every vif is up", cfg.name, e)
            dom.vif_devids = []
            dom.vifs_up = {d for d, _ in dom.vifs()}
        dom.job = Job.from_record(rec.get("job"))
        ident = rec.get("qemu_ident")
        if isinstance(ident, list) and len(ident) == 2:
            dom.qemu_ident = (int(ident[0]), int(ident[1]))
        dom.replaces = rec.get("replaces") if isinstance(rec.get("replaces"), dict) else None
        return dom

    async def _adopt_one(self, dom: Domain) -> None:
        if dom.state == State.INCOMING and self.cluster is not None:
            self.cluster.arriving.add(dom.uuid)     # never ran here: its config is the source's
        if dom.state in (State.CREATING, State.DYING, State.INCOMING):
            # Interrupted create, destroy or arriving migration: roll back /
            # finish — never keep half a domain.  (An arriving domain runs
            # only once the source has committed, and that sets "running".)
            log.info("%s: %s was interrupted; cleaning up", dom.name,
                     {"creating": "create", "dying": "destroy"}.get(dom.state, "incoming migration"))
            # xend may have died between QEMU's start and recording its
            # pid: the pidfile xend writes in the run dir names it then, and
            # a death before even that leaves a QEMU only a scan finds.
            run_dir = self.paths.domain_run(dom.domid)
            pids = {p for p in (dom.pid, process.read_pidfile(run_dir / "qemu.pid"))
                    if p and process.is_ours(p, dom.uuid)}
            pids.update(process.find_by_uuid(dom.uuid, run_dir))
            for pid in sorted(pids):
                process.kill(pid)
                await process.wait_exit(pid, 5)
            await dom.destroy(force=True)
            return
        replaced, want_paused = dom.replaces, dom.paused
        if replaced:
            # Committed, but xend died before the QEMU it replaced was gone:
            # that one never runs again.
            await twins.drop_replaced(self, dom)
        try:
            if await dom.adopt():
                if replaced:
                    await twins.resume_arrived(dom, want_paused)
                await dom.recover_job()
                return
        except Exception as e:
            log.error("%s: cannot reconnect to QEMU pid %s: %s", dom.name, dom.pid, e)
            if dom.pid and process.alive(dom.pid):
                # Keep the record and the name: never start it a second time.
                dom.load_state(State.RUNNING)
                return
        if dom.state in (State.SHUTDOWN, State.CRASHED) and dom.cfg:
            if not process.is_ours(dom.pid, dom.uuid):
                dom.pid = None
            log.info("%s: preserved %s domain kept", dom.name, dom.state)
            return
        if dom.job:
            # A save past its commit point ends with the domain gone anyway;
            # a snapshot revert's recovery starts QEMU again (or gives up).
            await dom.recover_job()
            if dom.gone.is_set() or dom.qemu_alive() or dom.state != State.RUNNING:
                return
        log.error("%s: QEMU (pid %s) went away while xend was not running", dom.name, dom.pid)
        await dom.qemu_died()

    async def detach_all(self) -> None:
        for d in self.everyone():
            await d.detach()
