"""One domain: its QEMU instance (launch, adopt, release), the events QEMU
sends and the on_* policy applied to them, and the run-state operations
(pause, shutdown, destroy, dump, rename).

The state machine and the on_* policy are pure functions in lifecycle.py;
CPU and memory are in resources.py, save and restore in saving.py,
snapshots in snapshots.py,
hotplug in devices/, the Xen layouts in views.py; features (HVM
firmware and display, vTPM, PCI) take part through hooks (features.py).
Every change that must survive an xend crash is persisted through the
store before it is acted on, so an xend that restarts mid-operation can
finish or roll it back.  A long operation is a job (jobs.py), recorded in
``self.job`` and the persisted runtime record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time

from .. import faults, storekeys
from ..config import hvmopts, sxp
from ..config.domain import DomainConfig
from ..hypervisor import cgroups
from ..hypervisor.qemu import argv as qargv
from ..hypervisor.qemu import process, qemulog
from ..hypervisor.qemu.kcache import boot_kernel
from ..hypervisor.qemu.kernel import KernelError
from ..hypervisor.qemu.monitor import PAUSED_STATES, Monitor
from ..store import Delete, Put, StoreError, dump_json
from . import apitoken, checkpoint, confine, durable, features, jobs, lifecycle
from .console import ConsoleRelay
from .consolelog import ConsoleLog
from .control import ControlChannel
from .devices import Unplugs
from .devices.block import BlockDevices
from .devices.net import NetDevices
from .errors import Conflict, InvalidRequest, XendError
from .hooks import FeatureContext
from .lifecycle import State
from .events import DomainEvents
from .runstate import DomainRunState
from .resources import DomainResources, sedf_record
from .saving import DomainSaving
from .snapshots import DomainSnapshots
from .services import DomainServices
from .views import DomainViews

log = logging.getLogger("pyxen.domain")


class Domain(DomainEvents, DomainRunState, DomainViews, DomainResources, DomainSaving, DomainSnapshots,
             BlockDevices, NetDevices):
    def __init__(self, services: DomainServices, cfg: DomainConfig, domid: int):
        self.services = services
        self.store = services.store
        self.paths = services.paths
        self.config = services.config
        self.net = services.net
        self.reservations = services.reservations
        self.cfg = cfg
        self.qemu_log_start = 0     # offset in the qemu-dm log where the current QEMU began
        self.domid = domid
        self._state = State.CREATING
        self.paused = False
        self.pid: int | None = None
        self.start_time = time.time()
        self.shutdown_reason: str | None = None
        self.shutdown_requested: str | None = None   # what xm shutdown/reboot last asked (recorded first)
        self.accel = "tcg"
        self.lock = asyncio.Lock()
        self.gone = asyncio.Event()
        self.halted = asyncio.Event()     # shut down or crashed, and preserved
        self.monitor: Monitor | None = None
        self.console: ConsoleRelay | None = None
        self.control: ControlChannel | None = None
        self.vcpu_tids: list[int] = []
        # Device ids of cfg.vifs, in the same order: stable while the domain
        # runs (the tap vif<domid>.<devid> and QEMU's ids derive from them).
        self.vif_devids: list[int] = []
        # Xen never reuses a device id in a domain's life (nextDeviceID): a
        # NIC a guest has not released yet still holds its QEMU ids.
        self.vif_next_devid = 0
        # The vifs whose host side this domain made (and so must unmake):
        # never another's interface that happened to have the same name.
        self.vifs_up: set[int] = set()
        self.unplugs = Unplugs()
        self.exit_watch = None
        self.expect_exit = False
        self.applying_policy = False
        self.shutdown_request: asyncio.Task | None = None
        self.announced = False   # 'created' was published; later changes are too
        self._last_emitted: tuple | None = None
        # SEDF's parameters as xm sched-sedf last set them (ms; the cap they
        # give is cpu_cap, the weight is cpu_weight): resources.sedf_view.
        self.sedf = {"period": 100.0, "slice": 0.0, "latency": 0.0, "extratime": 1}
        self.job: jobs.Job | None = None         # a save or migration in flight (persisted)
        self.marks: dict[str, float] = {}        # when each step of a save/restore ended
        # QEMU's wall-clock time of the last STOP and RESUME (a migration's
        # downtime is the target's RESUME minus the source's STOP).
        self.last_runstate_change: dict[str, float] = {}
        # (uid, gid) QEMU runs as, fixed when it starts (xend/confine.py);
        # None: root.  Persisted: hotplug after an xend restart needs it.
        self.qemu_ident: tuple[int, int] | None = None
        self.vnc: dict | None = None           # HVM: the VNC server's {"host", "port"}
        # A migration to this same host (docs/migration.md) runs two QEMUs
        # for one uuid.  The arriving copy (*twin*) keeps its record under
        # storekeys.incoming until the commit; the source, once the commit
        # made the twin the domain of record, is *superseded*: its teardown
        # must not touch the store, the domain lock or the uuid's cgroup,
        # which are the twin's now.  The twin's record names the QEMU it
        # replaces (*replaces*) until that one is gone, so an xend killed
        # in between finishes the switch-over.
        self.twin = False
        self.superseded = False
        self.replaces: dict | None = None

    # ------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def uuid(self) -> str:
        return self.cfg.uuid

    def __repr__(self) -> str:
        return f"<Domain {self.name} id={self.domid} {self.state}>"

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, new) -> None:
        """Every state change goes through the transition table."""
        self._state = lifecycle.check_transition(self._state, new)

    def load_state(self, value) -> None:
        """The state an earlier xend recorded (adopting its domains)."""
        self._state = lifecycle.stored_state(value)

    def feature_context(self) -> FeatureContext:
        return FeatureContext(self)

    def runtime_record(self) -> dict:
        return {"domid": self.domid, "state": str(self.state), "paused": self.paused, "pid": self.pid,
                "start_time": self.start_time, "shutdown_reason": self.shutdown_reason,
                "shutdown_requested": self.shutdown_requested,
                "accel": self.accel, "sedf": self.sedf, "vif_devids": self.vif_devids,
                "vif_next_devid": self.vif_next_devid, "vifs_up": sorted(self.vifs_up),
                "job": dict(self.job) if self.job else None,
                "qemu_ident": list(self.qemu_ident) if self.qemu_ident else None,
                **({"replaces": self.replaces} if self.replaces else {})}

    def persist(self, config: bool = False, extra: tuple = ((), ())) -> None:
        """Write the runtime record (and with *config* the config) in one
        transaction, with *extra* (compares, ops) in it too: the migration
        commit hands the domain lock over in the same step."""
        st = self.store
        if self.superseded:
            return              # the record under this uuid is the twin's now
        compares, more = list(extra[0]), list(extra[1])
        if self.twin:
            # The source's runtime record and config stay as they are.
            rec = {**self.runtime_record(), "config": sxp.to_string(self.cfg.to_sxp())}
            st.txn(compares, [Put(storekeys.incoming(st.host, self.uuid), dump_json(rec)), *more])
            return
        runtime = Put(storekeys.runtime(st.host, self.uuid), dump_json(self.runtime_record()))
        if config:
            # One transaction: a crash never leaves a config without its record.
            st.txn(compares, [Put(storekeys.config(self.uuid), sxp.to_string(self.cfg.to_sxp()).encode()),
                              runtime, *more])
        else:
            st.txn(compares, [runtime, *more])
        # Every state change is persisted, so this is where observers hear of it.
        seen = self.emitted_view()
        if seen != self._last_emitted and self.announced:
            self._last_emitted = seen
            self.services.emit("changed", self)

    def emitted_view(self) -> tuple:
        """What a 'changed' event reports a change of."""
        return (str(self.state), self.paused, self.name, self.cfg.vcpus, self.cfg.memory, self.domid)

    def announce(self) -> None:
        """The domain exists for observers now ('created' was published)."""
        self.announced = True
        self._last_emitted = self.emitted_view()

    def persist_quietly(self) -> None:
        try:
            self.persist()
        except Exception as e:
            log.error("%s: cannot persist state: %s", self.name, e)

    def persist_config_quietly(self) -> None:
        try:
            self.persist(config=True)
        except Exception as e:
            log.error("%s: cannot persist config: %s", self.name, e)

    def forget(self) -> None:
        st = self.store
        cluster = self.services.cluster
        if self.superseded:
            return              # the twin runs on under this uuid, lock and config
        if self.twin:
            # An arriving copy that never ran: the source keeps the rest.
            st.txn([], [Delete(storekeys.incoming(st.host, self.uuid))])
            if cluster is not None:
                cluster.arriving.discard(self.uuid)
            return
        ops = [Delete(storekeys.runtime(st.host, self.uuid))]
        # In a cluster the config is shared: a domain that runs on another
        # host now (migrated there, restarted there) keeps it.
        if cluster is None or cluster.may_forget_config(self.uuid):
            ops.append(Delete(storekeys.config(self.uuid)))
        st.txn([], ops)
        if cluster is not None:
            cluster.released(self.uuid)

    def runtime(self) -> qargv.Runtime:
        p = self.paths
        return qargv.Runtime(domid=self.domid, run_dir=p.domain_run(self.domid),
                             console_log=p.console_log_dir / f"guest-{self.name}.log",
                             accel=self.accel, qemu=self.config["qemu-binary"], daemonize=False)

    # --------------------------------------------------------------- start
    async def start(self, paused: bool, restore: "checkpoint.SaveInfo | None" = None,
                    machine: str | None = None) -> None:
        """Start QEMU for this domain (state must already be persisted).
        With *restore*, QEMU loads the saved state instead of booting.  In
        state ``incoming`` (a migration arriving) QEMU is left waiting for
        the stream, on the source's *machine* type."""
        self.qemu_ident = confine.identity(self.config, self.domid, self.cfg)
        why_root = confine.root_reason(self.cfg)
        if why_root:
            log.warning("%s: QEMU runs as root (without capabilities but those it needs) for %s",
                        self.name, why_root)
        rt = self.runtime()
        self.marks = {"start": time.monotonic()}
        if restore is not None:
            if "sedf" in restore.meta:      # scheduler settings travel with the guest
                self.sedf = sedf_record(restore.meta["sedf"])
            rt.incoming = "defer"
            rt.machine = str(restore.meta.get("machine") or rt.machine)
        incoming = self.state == State.INCOMING
        if incoming:
            rt.incoming = "defer"
            rt.machine = machine or rt.machine
        if rt.run_dir.exists():
            shutil.rmtree(rt.run_dir, ignore_errors=True)
        rt.run_dir.mkdir(parents=True, mode=0o700)
        if self.qemu_ident:
            # QEMU makes its sockets and pidfile here, as its own uid.
            os.chown(rt.run_dir, *self.qemu_ident)
        rt.console_log.parent.mkdir(parents=True, exist_ok=True)
        for sock in (rt.qmp_sock, rt.console_sock):
            if len(str(sock).encode()) > 107:
                raise XendError(f"socket path too long for a Unix socket: {sock} (use a shorter PYXEN_ROOT)")
        loop = asyncio.get_running_loop()
        if self.cfg.builder == "linux":
            try:
                rt.kernel = await loop.run_in_executor(None, boot_kernel, self.cfg.kernel,
                                                       self.paths.images / "cache")
            except KernelError as e:        # a hostile or absurd kernel file: one line
                raise InvalidRequest(str(e)) from None
        elif restore is not None:
            features.check_restore(self.cfg, restore.meta, restore.path)
        # The features' files (OVMF variables, a fresh swtpm) before the
        # QEMU that opens them; then the vifs' host side (QEMU opens each tap
        # by name).  A failure leaves what was made to release() (create
        # rolls back).
        await features.before_start(self.feature_context(), rt)
        for devid, spec in self.vifs():
            rt.nics.append((devid, *await self.net.vif_up(self, devid, spec)))
            self.vifs_up.add(devid)
            self.persist()
        # QEMU opens no host path: xend opens its disks, kernel and console
        # log and hands it the descriptors (xend/confine.py).
        fds = confine.QemuFds()
        try:
            await loop.run_in_executor(None, self._open_for_qemu, fds, rt)
            argv = qargv.build(self.cfg, rt)
            log.info("%s: starting QEMU: %s", self.name, " ".join(argv))
            self.qemu_log_start = qemulog.mark(rt.qemu_log)     # this QEMU's part of the log
            self.pid = await loop.run_in_executor(None, lambda: process.start(
                argv, rt.pidfile, rt.qemu_log, 60.0, tuple(fds.fds()), rt.hvm.env if rt.hvm else None,
                qmp_sock=rt.qmp_sock, launcher=confine.launcher(self.qemu_ident, self.cfg)))
        except process.QemuStartError as e:
            # QEMU said no to this domain on this host (a 4xx, not xend failing).
            raise Conflict(f"QEMU failed to start domain {self.name}: {e}") from None
        finally:
            fds.close()
        self.persist()
        faults.point("create-after-qemu-start")
        await self._connect(rt)
        self.marks["qemu"] = time.monotonic()
        if incoming:
            return              # the relocation server feeds it (migration.py)
        if restore is not None:
            await self.load(restore)
            faults.point("restore-after-load")
        else:
            await self.setup_cpus_and_memory()
        await features.after_start(self.feature_context())
        self.apply_placement(initial=True)
        self.state = State.RUNNING
        self.start_time = time.time()
        if not paused:
            await self.monitor.cont()
        self.paused = paused
        self.persist()

    def _open_for_qemu(self, fds: "confine.QemuFds", rt: qargv.Runtime) -> None:
        """Open what QEMU's command line would name (in an executor thread:
        reading image headers and copying an unreadable kernel block)."""

        disks = hvmopts.all_disks(self.cfg.disks, self.cfg.hvm) if self.cfg.builder == "hvm" else self.cfg.disks
        fds.add_disks(disks)
        rt.add_fds, rt.disk_fds = fds.adds, fds.disks
        if self.cfg.builder == "hvm":
            for key in ("fda", "fdb"):
                if self.cfg.hvm.get(key):
                    fd = confine.open_file(self.cfg.hvm[key], False, f"floppy {key}")
                    rt.disk_fds[key] = (fds.add(fd, confine.OPAQUE_PREFIX + key), [])
        if self.cfg.builder == "linux":
            rt.kernel = fds.file_arg(rt.kernel or self.cfg.kernel, "kernel " + str(rt.kernel or self.cfg.kernel))
            if self.cfg.ramdisk:
                rt.initrd = fds.file_arg(self.cfg.ramdisk, f"ramdisk {self.cfg.ramdisk}")
        rt.console_log_arg = fds.log_arg(rt.console_log)
        if self.qemu_ident:
            for p in (rt.hvm.nvram if rt.hvm else None, rt.tpm_sock):
                if p is not None and p.exists():
                    os.chown(p, *self.qemu_ident)     # files of the run dir QEMU opens itself

    async def _connect(self, rt: qargv.Runtime) -> None:
        self.expect_exit = False
        self.exit_watch = process.watch_exit(self.pid, self.on_exit)
        self.monitor = Monitor(self.name, on_event=self.on_event, on_disconnect=self.on_qmp_gone)
        await self.monitor.connect(str(rt.qmp_sock))
        self.console = ConsoleRelay(self.name, str(rt.console_sock),
                                    self.config["console-limit"] * 1024,
                                    ConsoleLog(rt.console_log, self.config["console-log-max-size"] * 1024,
                                               self.config["console-log-max-files"]))
        await self.console.start()
        self.control = ControlChannel(self.name, str(rt.control_sock))
        await self.control.connect()
        await self._export_console()
        await self.refresh_vcpus()

    async def _export_console(self) -> None:
        if not self.config["xend-console-server"]:
            return
        port = self.cfg.console_port or 9600 + self.domid
        try:
            token = apitoken.load_token(apitoken.token_path(self.config, self.paths.etc))
            await self.console.export_tcp(self.config["xend-console-address"], port, token)
        except OSError as e:
            log.error("%s: cannot export console on port %d: %s", self.name, port, e.strerror)

    # --------------------------------------------------------------- adopt
    async def adopt(self) -> bool:
        """Reconnect to a QEMU left running by an earlier xend.  False if it is gone."""
        if not process.is_ours(self.pid, self.uuid):
            return False
        rt = self.runtime()
        await self._connect(rt)
        status = await self.monitor.status()
        self.paused = status in PAUSED_STATES and self.state == State.RUNNING
        if self.state == State.RUNNING and status in ("shutdown", "guest-panicked"):
            # The guest powered off or panicked while no xend was watching:
            # apply its on_* action now, as if the event had just arrived.
            self.paused = False
            reason = "crash" if status == "guest-panicked" else (self.shutdown_reason or "poweroff")
            asyncio.get_running_loop().create_task(self.guest_exited(reason))
        ctx = self.feature_context()
        await features.adopt(ctx)
        self.apply_placement(initial=False)
        log.info("%s: adopted QEMU pid %d (domid %d, %s)", self.name, self.pid, self.domid, status)
        return True

    async def recover_job(self) -> None:
        """After an xend restart: finish or roll back the job an earlier
        xend left (its kind's recovery, jobs.RECOVERY).  QEMU may be gone."""
        job = self.job
        if not job:
            return
        recover = jobs.recovery_for(job)
        if recover is None:
            log.error("%s: unknown interrupted job %r dropped", self.name, job)
            self.job = None
            self.persist()
            return
        await recover(self, job)

    # ------------------------------------------------------------ operations
    def require_live(self, op: str = "") -> None:
        """Refuse *op* unless it may run beside the job (if any) and QEMU runs."""
        self.refuse_if_busy(op)
        if self.state != State.RUNNING or self.monitor is None:
            raise Conflict(f"Domain {self.name} is not running (state {self.state})")

    def refuse_if_busy(self, op: str = "") -> None:
        jobs.refuse_beside(self.job, op, self.name)

    async def destroy(self, force: bool = False) -> None:
        """Stop QEMU and forget the domain.  Refused while a job runs, except
        for xend's own roll-backs (*force*)."""
        if not force:
            self.refuse_if_busy("destroy")
        async with self.lock:
            await self.destroy_locked()

    async def destroy_locked(self) -> None:
        """destroy() for a caller that holds the domain's lock."""
        if self.gone.is_set():
            return
        self.state = State.DYING
        self.expect_exit = True
        # Recorded so a crash mid-destroy is finished by the next xend; on a
        # full disk the destroy goes on regardless (durable.py: a destroy
        # must destroy, and the store's deletes need no space).
        durable.persist_or_log(self, "destroy")
        faults.point("destroy-after-dying")
        await self.release()
        self.finish_destroy()

    async def release(self) -> None:
        """Stop QEMU (if running) and drop every host resource it held."""
        process.unwatch(self.exit_watch)
        self.exit_watch = None
        if self.monitor is not None:
            if self.pid and process.alive(self.pid):
                try:
                    await self.monitor.quit()
                except Exception:
                    pass
            await self.monitor.close()
            self.monitor = None
        if self.pid and process.alive(self.pid):
            if not await process.wait_exit(self.pid, 5):
                process.kill(self.pid)
                await process.wait_exit(self.pid, 5)
        if self.console is not None:
            await self.console.close()
            self.console = None
        if self.control is not None:
            await self.control.close()
            self.control = None
        await features.release(self.feature_context())
        shutil.rmtree(self.paths.domain_run(self.domid), ignore_errors=True)
        if not (self.twin or self.superseded):
            cgroups.remove(self.uuid)       # a group by uuid: the other copy's too
        for devid, spec in self.vifs():
            if devid in self.vifs_up:
                await self.net.vif_down(self, devid, spec)
                self.vifs_up.discard(devid)

    def finish_destroy(self) -> None:
        self.pid = None
        try:
            self.forget()
        except StoreError as e:
            # QEMU is gone already; the record left says "dying" (or less),
            # and the next xend finishes a dying domain, never restarts it.
            log.error("%s: destroyed, but its state record could not be removed: %s", self.name, e)
        self.services.remove(self)
        self.gone.set()
        if not (self.twin or self.superseded):
            # (One of two copies of a same-host migration ending is no
            # domain's end: the other copy is the domain.)
            self.services.emit("destroyed", self)
        log.info("%s: destroyed (domid %d)", self.name, self.domid)

    async def detach(self) -> None:
        """xend is stopping: let go of QEMU without stopping it."""
        self.expect_exit = True
        process.unwatch(self.exit_watch)
        if self.monitor is not None:
            await self.monitor.close()
        if self.console is not None:
            await self.console.close()
        if self.control is not None:
            await self.control.close()

