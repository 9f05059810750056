"""One domain's lifecycle: start its QEMU, watch it, apply on_* actions.

States (``self.state``): ``creating`` → ``running`` → (``shutdown`` |
``crashed``, kept only when the action is ``preserve``) → ``dying`` → gone.
Paused is a flag beside ``running``, as in Xen.  Every change that must
survive an xend crash is persisted through the store before it is acted on,
so an xend that restarts mid-operation can finish or roll it back.

A long operation (today: save) is a *job*, recorded in ``self.job`` and in
the persisted runtime record.  While one runs, the domain's lock is held
and other operations on the domain are refused at once rather than queued
behind it.  A restore is a create that loads QEMU's state instead of
booting, so it shares the ``creating`` state and its roll-back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
import uuid as uuidlib
from typing import TYPE_CHECKING

from .. import faults, storekeys
from ..config import sxp
from ..config.domain import DomainConfig
from ..config.specs import disk_from_parts, disk_number, format_cpuset, parse_cpuset
from ..config.errors import ConfigError
from ..hypervisor import cgroups
from ..hypervisor.qemu import argv as qargv
from ..hypervisor.qemu import process, qemulog
from ..hypervisor.qemu.kcache import boot_kernel
from ..hypervisor.qemu.kernel import KernelError
from ..hypervisor.qemu.qmp import QmpSession, QMPError, QmpTimeout
from ..store import Delete, Put, StoreError, dump_json
from . import apitoken, checkpoint, confine, guestreach, userpath, vtpm
from . import hvm as hvmx
from .console import ConsoleRelay
from .consolelog import ConsoleLog
from .control import ControlChannel, ControlError
from .errors import Conflict, InvalidRequest, XendError

if TYPE_CHECKING:
    from .domains import Domains

log = logging.getLogger("pyxen.domain")

SHUTDOWN_REASONS = {"poweroff": 0, "reboot": 1, "suspend": 2, "crash": 3, "halt": 4}

# Saving to a file: QEMU's default cap (128 MiB/s) would make the disk wait
# for QEMU; libvirt also lifts it for saves.
SAVE_BANDWIDTH = 1 << 40
SAVE_STALL = 60.0           # seconds without a byte of stream before a save is abandoned
RESTORE_BASE = 120.0        # a restore gets this long plus ...
RESTORE_RATE = 20 << 20     # ... its stream length at this many bytes/s
MIGRATION_DONE = ("completed", "failed", "cancelled")
MIGRATION_BUSY = ("setup", "active", "cancelling", "device", "pre-switchover", "wait-unplug")


class Domain:
    def __init__(self, registry: "Domains", cfg: DomainConfig, domid: int):
        self.reg = registry
        self.cfg = cfg
        self.qemu_log_start = 0     # offset in the qemu-dm log where the current QEMU began
        self.domid = domid
        self.state = "creating"
        self.paused = False
        self.pid: int | None = None
        self.start_time = time.time()
        self.shutdown_reason: str | None = None
        self.accel = "tcg"
        self.lock = asyncio.Lock()
        self.gone = asyncio.Event()
        self.halted = asyncio.Event()     # shut down or crashed, and preserved
        self.qmp: QmpSession | None = None
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
        self._device_gone: dict[str, asyncio.Event] = {}
        self._exit_watch = None
        self._expect_exit = False
        self._handling = False
        self._shutdown_task: asyncio.Task | None = None
        self.announced = False   # 'created' was published; later changes are too
        # SEDF's view (xm sched-sedf): period and latency in ms; the slice and
        # extratime are derived from cpu_cap, the weight is cpu_weight.
        self.sedf = {"period": 100.0, "latency": 0.0}
        self.job: dict | None = None           # a save in flight (persisted)
        self._mig_status: str | None = None    # from QEMU's MIGRATION events
        self._mig_changed = asyncio.Event()
        self._marks: dict[str, float] = {}      # when each step of a save/restore ended
        # QEMU's wall-clock time of the last STOP and RESUME (a migration's
        # downtime is the target's RESUME minus the source's STOP).
        self.last_runstate_change: dict[str, float] = {}
        # (uid, gid) QEMU runs as, fixed when it starts (xend/confine.py);
        # None: root.  Persisted: hotplug after an xend restart needs it.
        self.qemu_ident: tuple[int, int] | None = None
        self.vnc: dict | None = None           # HVM: the VNC server's {"host", "port"}

    # ------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def uuid(self) -> str:
        return self.cfg.uuid

    def __repr__(self) -> str:
        return f"<Domain {self.name} id={self.domid} {self.state}>"

    def runtime_record(self) -> dict:
        return {"domid": self.domid, "state": self.state, "paused": self.paused, "pid": self.pid,
                "start_time": self.start_time, "shutdown_reason": self.shutdown_reason,
                "accel": self.accel, "sedf": self.sedf, "vif_devids": self.vif_devids,
                "vif_next_devid": self.vif_next_devid, "vifs_up": sorted(self.vifs_up),
                "job": self.job, "qemu_ident": list(self.qemu_ident) if self.qemu_ident else None}

    def persist(self, config: bool = False) -> None:
        st = self.reg.store
        runtime = Put(storekeys.runtime(st.host, self.uuid), dump_json(self.runtime_record()))
        if config:
            # One transaction: a crash never leaves a config without its record.
            st.txn([], [Put(storekeys.config(self.uuid), sxp.to_string(self.cfg.to_sxp()).encode()), runtime])
        else:
            st.txn([], [runtime])
        # Every state change is persisted, so this is where observers hear of it.
        seen = (self.state, self.paused, self.name, self.cfg.vcpus, self.cfg.memory, self.domid)
        if seen != getattr(self, "_last_emitted", None) and self.announced:
            self._last_emitted = seen
            self.reg.emit("changed", self)

    def forget(self) -> None:
        st = self.reg.store
        st.txn([], [Delete(storekeys.runtime(st.host, self.uuid)), Delete(storekeys.config(self.uuid))])

    def runtime(self) -> qargv.Runtime:
        p = self.reg.paths
        return qargv.Runtime(domid=self.domid, run_dir=p.domain_run(self.domid),
                             console_log=p.console_log_dir / f"guest-{self.name}.log",
                             accel=self.accel, qemu=self.reg.config["qemu-binary"],
                             runas=confine.runas(self.qemu_ident))

    def vifs(self) -> list[tuple[int, dict]]:
        """(devid, spec) of each vif; devids are 0.. unless hotplug made gaps."""
        if len(self.vif_devids) != len(self.cfg.vifs):
            self.vif_devids = list(range(len(self.cfg.vifs)))
        return list(zip(self.vif_devids, self.cfg.vifs))

    # --------------------------------------------------------------- start
    async def start(self, paused: bool, restore: "checkpoint.SaveInfo | None" = None,
                    machine: str | None = None) -> None:
        """Start QEMU for this domain (state must already be persisted).
        With *restore*, QEMU loads the saved state instead of booting.  In
        state ``incoming`` (a migration arriving) QEMU is left waiting for
        the stream, on the source's *machine* type."""
        self.qemu_ident = confine.identity(self.reg.config, self.domid)
        rt = self.runtime()
        self._marks = {"start": time.monotonic()}
        if restore is not None:
            rt.incoming = "defer"
            rt.machine = str(restore.meta.get("machine") or rt.machine)
        incoming = self.state == "incoming"
        if incoming:
            rt.incoming = "defer"
            rt.machine = machine or rt.machine
        if rt.run_dir.exists():
            shutil.rmtree(rt.run_dir, ignore_errors=True)
        rt.run_dir.mkdir(parents=True, mode=0o700)
        rt.console_log.parent.mkdir(parents=True, exist_ok=True)
        for sock in (rt.qmp_sock, rt.console_sock):
            if len(str(sock).encode()) > 107:
                raise XendError(f"socket path too long for a Unix socket: {sock} (use a shorter PYXEN_ROOT)")
        loop = asyncio.get_running_loop()
        if self.cfg.builder == "linux":
            try:
                rt.kernel = await loop.run_in_executor(None, boot_kernel, self.cfg.kernel,
                                                       self.reg.paths.images / "cache")
            except KernelError as e:        # a hostile or absurd kernel file: one line
                raise InvalidRequest(str(e)) from None
        else:
            if restore is not None:
                hvmx.check_restore(self.cfg, restore.meta, restore.path)
            rt.hvm = hvmx.prepare(self, rt)
        # The vifs' host side first: QEMU opens each tap by name.  A failure
        # here leaves the taps made so far to _release (create rolls back).
        for devid, spec in self.vifs():
            rt.nics.append((devid, *await self.reg.net.vif_up(self, devid, spec)))
            self.vifs_up.add(devid)
            self.persist()
        # A fresh swtpm for a vTPM, before the QEMU that connects to it.
        await vtpm.start_fresh(self, rt)
        # An unprivileged QEMU gets its disks as descriptors xend opened.
        disk_fds = confine.DiskFds(self.cfg.disks if self.qemu_ident else [])
        try:
            rt.disk_fds = disk_fds.sets
            argv = qargv.build(self.cfg, rt)
            log.info("%s: starting QEMU: %s", self.name, " ".join(argv))
            self.qemu_log_start = qemulog.mark(rt.qemu_log)     # this QEMU's part of the log
            self.pid = await loop.run_in_executor(None, process.start, argv, rt.pidfile, rt.qemu_log,
                                                  60.0, tuple(disk_fds.fds()),
                                                  rt.hvm.env if rt.hvm else None)
        except process.QemuStartError as e:
            # QEMU said no to this domain on this host (a 4xx, not xend failing).
            raise Conflict(f"QEMU failed to start domain {self.name}: {e}") from None
        finally:
            disk_fds.close()
        self.persist()
        faults.point("create-after-qemu-start")
        await self._connect(rt)
        self._marks["qemu"] = time.monotonic()
        if incoming:
            return              # the relocation server feeds it (migration.py)
        if restore is not None:
            await self._load(restore)
            faults.point("restore-after-load")
        else:
            await self.setup_cpus_and_memory()
        await hvmx.after_start(self)
        self.apply_placement(initial=True)
        self.state = "running"
        self.start_time = time.time()
        if not paused:
            await self.qmp.execute("cont")
        self.paused = paused
        self.persist()

    async def _connect(self, rt: qargv.Runtime) -> None:
        self._expect_exit = False
        self._exit_watch = process.watch_exit(self.pid, self._on_exit)
        self.qmp = QmpSession(self.name, on_event=self._on_event, on_disconnect=self._on_qmp_gone)
        await self.qmp.connect(str(rt.qmp_sock))
        self.console = ConsoleRelay(self.name, str(rt.console_sock),
                                    self.reg.config["console-limit"] * 1024,
                                    ConsoleLog(rt.console_log, self.reg.config["console-log-max-size"] * 1024,
                                               self.reg.config["console-log-max-files"]))
        await self.console.start()
        self.control = ControlChannel(self.name, str(rt.control_sock))
        await self.control.connect()
        await self._export_console()
        await self.refresh_vcpus()

    async def _export_console(self) -> None:
        if not self.reg.config["xend-console-server"]:
            return
        port = self.cfg.console_port or 9600 + self.domid
        try:
            token = apitoken.load_token(apitoken.token_path(self.reg.config, self.reg.paths.etc))
            await self.console.export_tcp(self.reg.config["xend-console-address"], port, token)
        except OSError as e:
            log.error("%s: cannot export console on port %d: %s", self.name, port, e.strerror)

    async def refresh_vcpus(self) -> None:
        cpus = await self.qmp.execute("query-cpus-fast")
        self.vcpu_tids = [c["thread-id"] for c in sorted(cpus, key=lambda c: c["cpu-index"])]

    # --------------------------------------------------------------- adopt
    async def adopt(self) -> bool:
        """Reconnect to a QEMU left running by an earlier xend.  False if it is gone."""
        if not process.is_ours(self.pid, self.uuid):
            return False
        rt = self.runtime()
        await self._connect(rt)
        st = await self.qmp.execute("query-status")
        # A domain created paused (-p) never ran: QEMU calls that "prelaunch".
        self.paused = st.get("status") in ("paused", "suspended", "prelaunch") and self.state == "running"
        if self.state == "running" and st.get("status") in ("shutdown", "guest-panicked"):
            # The guest powered off or panicked while no xend was watching:
            # apply its on_* action now, as if the event had just arrived.
            self.paused = False
            reason = "crash" if st["status"] == "guest-panicked" else (self.shutdown_reason or "poweroff")
            asyncio.get_running_loop().create_task(self._guest_exited(reason))
        await hvmx.query_vnc(self)
        self.apply_placement(initial=False)
        vtpm.adopt(self)
        log.info("%s: adopted QEMU pid %d (domid %d, %s)", self.name, self.pid, self.domid, st.get("status"))
        return True

    # --------------------------------------------------------------- events
    async def _on_event(self, ev: dict) -> None:
        name, data = ev.get("event"), ev.get("data", {})
        if name == "MIGRATION":
            self._mig_status = data.get("status")
            self._mig_changed.set()
            return
        if name in ("STOP", "RESUME"):
            ts = ev.get("timestamp") or {}
            self.last_runstate_change[name] = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
        if name in ("STOP", "RESUME") and (self.job or self.state == "incoming"):
            return        # the job stops and resumes the guest itself
        if name == "STOP" and self.state == "running" and not self._handling:
            self.paused = True
        elif name == "RESUME":
            self.paused = False
        elif name == "SHUTDOWN" and data.get("guest"):
            reason = {"guest-shutdown": "poweroff", "guest-reset": "reboot",
                      "guest-panic": "crash"}.get(data.get("reason"), "poweroff")
            if self.shutdown_reason == "halt" and reason == "poweroff":
                reason = "halt"
            asyncio.create_task(self._guest_exited(reason))
        elif name == "RESET" and data.get("guest"):
            if self.cfg.on_reboot.endswith("restart"):
                log.info("%s: guest rebooted; on_reboot=%s", self.name, self.cfg.on_reboot)
                self.start_time = time.time()
                self._persist_quietly()
            else:
                asyncio.create_task(self._guest_exited("reboot"))
        elif name == "GUEST_PANICKED":
            asyncio.create_task(self._guest_exited("crash"))
        elif name == "DEVICE_DELETED":
            gone = self._device_gone.get(data.get("device") or "")
            if gone is not None:
                gone.set()
        if name in ("STOP", "RESUME"):
            self._persist_quietly()

    def _persist_quietly(self) -> None:
        try:
            self.persist()
        except Exception as e:
            log.error("%s: cannot persist state: %s", self.name, e)

    async def _guest_exited(self, reason: str) -> None:
        """The guest powered off, rebooted or panicked: apply its on_* action."""
        if self._handling or self.state not in ("running",):
            return
        self._handling = True
        try:
            async with self.lock:
                action = {"poweroff": self.cfg.on_poweroff, "halt": self.cfg.on_poweroff,
                          "reboot": self.cfg.on_reboot, "crash": self.cfg.on_crash}[reason]
                faults.point("guest-exit")
                log.info("%s: guest %s; on_%s=%s", self.name, reason,
                         "crash" if reason == "crash" else ("reboot" if reason == "reboot" else "poweroff"),
                         action)
                self.shutdown_reason = reason
                ran = time.time() - self.start_time
                if reason == "crash" and action.endswith("restart") and \
                        ran < self.reg.config["minimum-restart-time"]:
                    log.error("%s: crashed after only %.0f s (< minimum-restart-time %d s); destroying "
                              "instead of restarting", self.name, ran, self.reg.config["minimum-restart-time"])
                    action = "destroy"
                action = guestreach.crash_action(action, reason, self.reg.config["enable-dump"])
                if action.startswith("coredump-"):
                    await self._coredump_locked(None)
                    action = action.split("-", 1)[1]
                if action == "rename-restart":
                    await self._rename_restart_locked(reason)
                    return
                if action.endswith("restart"):
                    if reason != "reboot":
                        await self.qmp.execute("system_reset")
                    await self.qmp.execute("cont")
                    self.shutdown_reason = None
                    self.paused = False
                    self.start_time = time.time()
                    self.persist()
                elif action == "preserve":
                    self.state = "crashed" if reason == "crash" else "shutdown"
                    self.persist()
                    self.halted.set()
                else:
                    await self._destroy_locked()
        except (QMPError, XendError, OSError) as e:
            log.error("%s: applying on_%s failed: %s", self.name, reason, e)
        finally:
            self._handling = False

    def _on_exit(self) -> None:
        self._exit_watch = None
        if not self._expect_exit:
            asyncio.get_running_loop().create_task(self._qemu_died())

    async def _on_qmp_gone(self) -> None:
        if self._expect_exit or self.pid is None:
            return
        if not process.alive(self.pid):
            # A task of its own: handling the death closes this QMP session,
            # whose watcher task is the one calling us.
            asyncio.get_running_loop().create_task(self._qemu_died())

    async def _qemu_died(self) -> None:
        # A create or restore whose QEMU dies fails, and its caller rolls it
        # back: on_crash=restart must not boot a domain that never started.
        if self._expect_exit or self.state in ("dying", "creating") or self.gone.is_set():
            return
        self._expect_exit = True
        log.error("%s: QEMU (pid %s) died unexpectedly; on_crash=%s", self.name, self.pid, self.cfg.on_crash)
        async with self.lock:
            await self._release()
            self.shutdown_reason = "crash"
            ran = time.time() - self.start_time
            if self.cfg.on_crash.endswith("restart") and ran < self.reg.config["minimum-restart-time"]:
                log.error("%s: ran only %.0f s (< minimum-restart-time); not restarting", self.name, ran)
            elif self.cfg.on_crash.endswith("restart"):
                try:
                    self.state = "creating"
                    self.persist()
                    await self.start(paused=False)
                    return
                except Exception as e:
                    log.error("%s: restart after crash failed: %s", self.name, e)
            if self.cfg.on_crash == "preserve":
                self.state = "crashed"
                self.pid = None
                self.persist()
                self.halted.set()
                return
            self._finish_destroy()

    # ---------------------------------------------------- vCPUs and memory
    async def setup_cpus_and_memory(self) -> None:
        """Before the guest runs: balloon down to 'memory' when maxmem is larger."""
        if self.cfg.maxmem and self.cfg.maxmem > self.cfg.memory:
            await self.qmp.execute("balloon", {"value": self.cfg.memory << 20})

    async def vcpu_set(self, n: int) -> None:
        """Bring vCPUs 0..n-1 online and the rest offline, inside the guest."""
        async with self.lock:
            self._require_live()
            maxv = qargv.max_vcpus(self.cfg)
            if not 1 <= n <= maxv:
                raise InvalidRequest(f"vcpus must be 1-{maxv} for domain {self.name} (maxvcpus {maxv}), got {n}")
            order = list(range(1, maxv))
            # Offline from the top down, online from the bottom up.
            for i in (order if n > self.cfg.vcpus else reversed(order)):
                want = "online" if i < n else "offline"
                try:
                    await self.control.request(f"cpu {i} {want}")
                except ControlError as e:
                    raise XendError(str(e)) from None
            self.cfg.vcpus = n
            self.persist(config=True)

    async def mem_set(self, mib: int) -> None:
        async with self.lock:
            self._require_live()
            boot = self._boot_memory()
            limit = min(self.cfg.maxmem or boot, boot)
            if (why := guestreach.mem_set_refusal(self.name, mib)) is not None:
                raise InvalidRequest(why)
            if not 16 <= mib <= limit:
                raise InvalidRequest(f"memory for domain {self.name} must be 16-{limit} MiB (maxmem), got {mib}")
            await self.qmp.execute("balloon", {"value": mib << 20})
            self.cfg.memory = mib
            self.persist(config=True)

    async def mem_max(self, mib: int) -> None:
        async with self.lock:
            boot = self._boot_memory()
            if mib < self.cfg.memory:
                raise InvalidRequest(f"maxmem {mib} MiB is below the domain's current memory ({self.cfg.memory} MiB)")
            if self.pid and mib > boot:
                raise InvalidRequest(f"maxmem cannot exceed {boot} MiB while domain {self.name} runs "
                                     "(its memory size is fixed at boot)")
            self.cfg.maxmem = mib
            self.persist(config=True)

    def _boot_memory(self) -> int:
        """The RAM QEMU was started with (the balloon ceiling)."""
        if self.pid:
            args = process.cmdline(self.pid)
            if "-m" in args:
                try:
                    return int(args[args.index("-m") + 1].rstrip("M"))
                except (ValueError, IndexError):
                    pass
        return max(self.cfg.memory, self.cfg.maxmem or 0)

    # --------------------------------------------------------- misc control
    async def sysrq(self, key: str) -> None:
        if len(key) != 1 or not key.isalnum():
            raise InvalidRequest(f"Invalid sysrq key {key!r}")
        async with self.lock:
            self._require_live()
            await self.qmp.execute("send-key", {"keys": [
                {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "sysrq"},
                {"type": "qcode", "data": key.lower()}]})

    async def dump_core(self, path: str | None, live: bool, crash: bool, reset: bool) -> str:
        async with self.lock:
            self._require_live()
            path = await self._coredump_locked(path, live)
            if crash:
                await self._destroy_locked()
            elif reset:
                await self.qmp.execute("system_reset")
            return path

    async def _coredump_locked(self, path: str | None, live: bool = False) -> str:
        if path is None:
            d = self.reg.paths.dump_dir
            d.mkdir(parents=True, exist_ok=True)
            path = str(d / time.strftime(f"%Y-%m%d-%H%M.%S-{self.name}.{self.domid}.core"))
        path = userpath.check(path, "core file")
        was_paused = self.paused
        if not live and not was_paused:
            await self.qmp.execute("stop")
        try:
            # xend creates the file and QEMU writes to the descriptor: an
            # unprivileged QEMU (xend/confine.py) may not open dump paths.
            # A new 0600 file renamed over the path when complete (userpath).
            try:
                fd, tmp = userpath.create_temp(path, ".pyxen-core")
            except OSError as e:
                raise XendError(f"dump of domain {self.name} failed: cannot create {path}: "
                                f"{e.strerror}") from None
            try:
                try:
                    await self.qmp.send_fd(fd, "pyxen-dump")
                finally:
                    os.close(fd)
                await self.qmp.execute("dump-guest-memory", {"paging": False, "protocol": "fd:pyxen-dump"},
                                       timeout=600)
                userpath.commit(tmp, path, "core file")
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise
        except QMPError as e:
            raise XendError(f"dump of domain {self.name} failed: {e}") from None
        finally:
            if not live and not was_paused and self.state == "running":
                await self.qmp.execute("cont")
        log.info("%s: core dumped to %s", self.name, path)
        return path

    async def rename(self, new: str) -> None:
        async with self.lock:
            self.reg.check_name_free(new, self)
            old = self.cfg.name
            self.cfg.name = new
            try:
                self.persist(config=True)
            except Exception:
                self.cfg.name = old
                raise
            log.info("%s: renamed to %s", old, new)

    async def _rename_restart_locked(self, reason: str) -> None:
        """Keep this (stopped) domain as Domain-<uuid>; start a fresh one under the name."""
        cfg = DomainConfig.from_sxp(self.cfg.to_sxp())
        cfg.uuid = str(uuidlib.uuid4())
        self.cfg.name = f"Domain-{self.uuid}"
        self.state = "crashed" if reason == "crash" else "shutdown"
        self.persist(config=True)
        self.halted.set()
        log.info("%s: preserved as %s; restarting", cfg.name, self.cfg.name)
        asyncio.get_running_loop().create_task(self.reg.create_config(cfg))

    # ------------------------------------------------------------ operations
    def _require_live(self) -> None:
        self._refuse_if_busy()
        if self.state != "running" or self.qmp is None:
            raise Conflict(f"Domain {self.name} is not running (state {self.state})")

    def _refuse_if_busy(self) -> None:
        if self.job:
            raise Conflict(f"Domain {self.name} is busy: {self.job.get('op', 'an operation')} "
                           "in progress")

    async def pause(self) -> None:
        self._refuse_if_busy()
        async with self.lock:
            self._require_live()
            await self.qmp.execute("stop")
            self.paused = True
            self.persist()

    async def unpause(self) -> None:
        self._refuse_if_busy()
        async with self.lock:
            self._require_live()
            await self.qmp.execute("cont")
            self.paused = False
            self.persist()

    async def shutdown(self, reason: str) -> None:
        """Ask the guest to power off, halt or reboot (it does the work)."""
        self._refuse_if_busy()
        if (why := guestreach.shutdown_refusal(self.cfg, reason)) is not None:
            raise Conflict(why)
        async with self.lock:
            self._require_live()
            self.shutdown_reason = reason if reason == "halt" else None
            if self.paused:
                await self.qmp.execute("cont")
                self.paused = False
            if reason == "reboot":
                # The guest's init maps Ctrl-Alt-Del to a clean reboot.
                await self.qmp.execute("send-key", {"keys": [
                    {"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"},
                    {"type": "qcode", "data": "delete"}]})
            else:
                await self.qmp.execute("system_powerdown")
                faults.point("shutdown-requested")
                # Like a request left in xenstore, the shutdown stays pending:
                # a guest still booting (no acpid yet) misses one button press,
                # so press again until it acts or the request times out.
                if self._shutdown_task is None or self._shutdown_task.done():
                    self._shutdown_task = asyncio.get_running_loop().create_task(self._repress())

    async def _repress(self, interval: float = 3.0) -> None:
        deadline = time.monotonic() + self.reg.config["device-destroy-timeout"]
        while time.monotonic() < deadline:
            await asyncio.sleep(interval)
            if self.gone.is_set() or self.state != "running" or self.qmp is None or self._handling:
                return
            if self.paused:
                continue
            try:
                await self.qmp.execute("system_powerdown")
            except Exception:
                return

    async def destroy(self, force: bool = False) -> None:
        """Stop QEMU and forget the domain.  Refused while a job runs, except
        for xend's own roll-backs (*force*)."""
        if not force:
            self._refuse_if_busy()
        async with self.lock:
            await self._destroy_locked()

    async def _destroy_locked(self) -> None:
        if self.gone.is_set():
            return
        self.state = "dying"
        self._expect_exit = True
        self.persist()
        faults.point("destroy-after-dying")
        await self._release()
        self._finish_destroy()

    async def _release(self) -> None:
        """Stop QEMU (if running) and drop every host resource it held."""
        process.unwatch(self._exit_watch)
        self._exit_watch = None
        if self.qmp is not None:
            if self.pid and process.alive(self.pid):
                try:
                    await self.qmp.execute("quit", timeout=5)
                except Exception:
                    pass
            await self.qmp.close()
            self.qmp = None
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
        await vtpm.stop(self)
        hvmx.keep_nvram(self)
        shutil.rmtree(self.reg.paths.domain_run(self.domid), ignore_errors=True)
        cgroups.remove(self.uuid)
        for devid, spec in self.vifs():
            if devid in self.vifs_up:
                await self.reg.net.vif_down(self, devid, spec)
                self.vifs_up.discard(devid)

    def _finish_destroy(self) -> None:
        self.pid = None
        self.forget()
        self.reg.remove(self)
        self.gone.set()
        self.reg.emit("destroyed", self)
        log.info("%s: destroyed (domid %d)", self.name, self.domid)

    async def detach(self) -> None:
        """xend is stopping: let go of QEMU without stopping it."""
        self._expect_exit = True
        process.unwatch(self._exit_watch)
        if self.qmp is not None:
            await self.qmp.close()
        if self.console is not None:
            await self.console.close()
        if self.control is not None:
            await self.control.close()

    # ------------------------------------------------------------------ HVM
    def vnc_address(self):
        """Where xend's web console relay reaches the screen: the Unix VNC
        socket every HVM domain with graphics has; None for the others."""
        if self.cfg.builder != "hvm" or self.state != "running" or not hvmx.hvmcfg.graphics(self.cfg.hvm):
            return None
        return str(self.runtime().vnc_sock)

    def vnc_display(self) -> tuple[str, int] | None:
        """The user's VNC server (host, port), as xm vncviewer --print shows it."""
        if self.vnc is None or self.state != "running":
            return None
        return self.vnc["host"], self.vnc["port"]

    async def qemu_monitor(self, command: str) -> str:
        return await hvmx.monitor(self, command)

    # ------------------------------------------------------ save / restore
    async def save(self, path: str, keep: bool = False) -> dict:
        """``xm save``: write the guest's state and config to *path*, then
        destroy the domain (or, with *keep* — ``-c`` — let it run on).
        On any failure the file is not created and the guest runs again
        (unless it was paused before)."""
        self._refuse_if_busy()
        async with self.lock:
            self._require_live()
            return await self._save_locked(path, keep)

    async def _save_locked(self, path: str, keep: bool) -> dict:
        loop = asyncio.get_running_loop()
        target = _save_target(path)
        t0 = time.monotonic()
        config = sxp.to_string(self.cfg.to_sxp())
        meta = await self._save_meta()
        resume = not self.paused
        try:
            fd, tmp = userpath.create_temp(target, ".pyxen-save")
        except OSError as e:
            raise XendError(f"Unable to create save file {target}: {e.strerror}") from None
        self.job = {"op": "save", "phase": "saving", "file": target, "tmp": tmp,
                    "resume": resume, "checkpoint": keep}
        stream = 0
        self._marks = {"start": t0}
        try:
            try:
                self.persist()
                if resume:
                    await self.qmp.execute("stop")
                else:
                    await self._leave_postmigrate()
                self._marks["stop"] = time.monotonic()
                offset = len(checkpoint.encode_header(config, meta, 0, b""))
                stream, digest = await self._stream_out(fd, tmp, offset)
                header = checkpoint.encode_header(config, meta, stream, digest)
                await loop.run_in_executor(None, checkpoint.finish_file, fd, header)
                self._marks["sync"] = time.monotonic()
            finally:
                os.close(fd)
            faults.point("save-before-commit")
            # The commit point: from here an xend restart finishes the save.
            self.job["phase"] = "commit"
            self.persist()
            faults.point("save-after-commit")
            userpath.commit(tmp, target, "save file")
        except BaseException as e:
            await self._save_failed(tmp, resume)
            if isinstance(e, OSError):
                raise XendError(f"Cannot save domain {self.name} to {target}: "
                                f"{e.strerror or e}{self._still()}") from None
            if isinstance(e, (QMPError, StoreError)):
                raise XendError(f"Cannot save domain {self.name} to {target}: {e}{self._still()}") from None
            if isinstance(e, XendError):
                raise type(e)(f"{e}{self._still()}") from None
            raise
        try:
            await loop.run_in_executor(None, checkpoint.fsync_dir, target)
        except OSError as e:
            log.warning("%s: fsync of %s's directory failed: %s", self.name, target, e.strerror)
        self._marks["commit"] = time.monotonic()
        times = _phases(self._marks, ("stop", "stream", "hash", "sync", "commit"))
        await self._finish_save(resume, keep)
        elapsed = time.monotonic() - t0
        log.info("%s: saved to %s: %d bytes of QEMU state in %.2f s (%s; %s %.2f s)", self.name, target,
                 stream, elapsed, ", ".join(f"{k} {v:.2f} s" for k, v in times.items()),
                 "resume" if keep else "destroy", time.monotonic() - self._marks["commit"])
        return {"file": target, "bytes": os.path.getsize(target), "stream_bytes": stream,
                "seconds": round(elapsed, 3), "phases": times}

    def _still(self) -> str:
        if self.gone.is_set() or self.pid is None or not process.alive(self.pid):
            return ""
        return f"; domain {self.name} is still {'paused' if self.paused else 'running'}"

    async def _save_meta(self) -> dict:
        version = await self.qmp.execute("query-version")
        q = version.get("qemu", {})
        machine = await self.qmp.execute("qom-get", {"path": "/machine", "property": "type"})
        return {"qemu": f"{q.get('major')}.{q.get('minor')}.{q.get('micro')}",
                "machine": str(machine).removesuffix("-machine"), "accel": self.accel,
                "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": socket.gethostname(), "domid": self.domid, "paused": self.paused,
                "memory": self.cfg.memory, **hvmx.save_meta(self)}

    async def _stream_out(self, fd: int, tmp: str, offset: int) -> tuple[int, bytes]:
        """Run QEMU's outgoing migration straight into *fd* (the temp file
        *tmp*) from *offset* on, while a worker thread hashes what it
        writes.  Returns (stream length, digest)."""
        loop = asyncio.get_running_loop()
        await self.qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True}]})
        await self.qmp.execute("migrate-set-parameters", {"max-bandwidth": SAVE_BANDWIDTH})
        # QEMU gets a copy of this descriptor, sharing its file offset.
        os.lseek(fd, offset, os.SEEK_SET)
        await self.qmp.send_fd(fd, "pyxen-save")
        follower = checkpoint.Follower(tmp, offset)
        self._mig_status = None
        self._mig_changed.clear()
        task = loop.run_in_executor(None, follower.run)
        try:
            try:
                await self.qmp.execute("migrate", {"uri": "fd:pyxen-save"})
            except BaseException:
                await self._quietly("closefd", {"fdname": "pyxen-save"})
                raise
            await self._watch_save(fd, task)
            self._marks["stream"] = time.monotonic()
            # QEMU flushed everything before it reported completion.
            end = os.fstat(fd).st_size
            follower.finish(end)
            digest = await task
            self._marks["hash"] = time.monotonic()
            return end - offset, digest
        except BaseException:
            follower.cancel()
            await self._quietly("migrate_cancel")
            # A migration that fails late stops the guest again: let it end
            # before anyone resumes the guest.
            await self._migration_settled()
            try:
                await asyncio.wait_for(asyncio.shield(task), 30)
            except BaseException:
                pass
            raise

    async def _watch_save(self, fd: int, task) -> None:
        """Until QEMU reports the migration complete.  Raises on a QEMU
        failure (ENOSPC included), a hashing error or a stall."""
        last, last_t = -1, time.monotonic()
        while True:
            if self._mig_status == "completed":
                return
            if self._mig_status in ("failed", "cancelled"):
                info = await self._quietly("query-migrate") or {}
                raise XendError(f"QEMU could not save the guest: "
                                f"{info.get('error-desc') or 'migration ' + self._mig_status}")
            if task.done():
                task.result()           # the hashing worker failed
            size = os.fstat(fd).st_size
            if size != last:
                last, last_t = size, time.monotonic()
            elif time.monotonic() - last_t > SAVE_STALL:
                raise XendError(f"the save made no progress for {SAVE_STALL:.0f} s")
            self._mig_changed.clear()
            try:
                # Events wake this at once; the timeout is for the stall
                # check, and the poll a fallback should an event go missing.
                await asyncio.wait_for(self._mig_changed.wait(), 1.0)
            except asyncio.TimeoutError:
                info = await self._quietly("query-migrate") or {}
                if info.get("status") in MIGRATION_DONE:
                    self._mig_status = info["status"]

    async def _leave_postmigrate(self) -> None:
        """A paused guest whose last save completed (xm save -c) sits in
        QEMU's 'postmigrate' state, from which QEMU refuses to migrate
        again; running is the only way out, so it runs for an instant."""
        st = await self.qmp.execute("query-status")
        if st.get("status") == "postmigrate":
            log.info("%s: paused after an earlier save; resuming it for an instant to save again",
                     self.name)
            await self.qmp.execute("cont")
            await self.qmp.execute("stop")

    async def _migration_settled(self, timeout: float = 10.0) -> None:
        """Until QEMU's outgoing migration is no longer under way."""
        deadline = time.monotonic() + timeout
        while self.pid and process.alive(self.pid):
            info = await self._quietly("query-migrate")
            if info is None or info.get("status") not in MIGRATION_BUSY:
                return
            if time.monotonic() > deadline:
                log.warning("%s: migration still under way after %.0f s", self.name, timeout)
                return
            await asyncio.sleep(0.05)

    async def _quietly(self, cmd: str, args: dict | None = None):
        if self.qmp is None:
            return None
        try:
            return await self.qmp.execute(cmd, args, timeout=10)
        except Exception as e:
            log.debug("%s: %s: %s", self.name, cmd, e)
            return None

    async def _save_failed(self, tmp: str, resume: bool) -> None:
        """Roll a save back: no file, and the guest as it was."""
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("%s: cannot remove %s: %s", self.name, tmp, e.strerror)
        if resume and self.pid and process.alive(self.pid) and self.qmp is not None:
            if await self._quietly("cont") is not None:
                self.paused = False
        self.job = None
        self._persist_quietly()

    async def _finish_save(self, resume: bool, keep: bool) -> None:
        if keep:
            # The file is safe by now: a failure to resume is logged, not
            # reported as a failed save.
            if resume:
                if await self._quietly("cont") is not None:
                    self.paused = False
                else:
                    log.error("%s: could not resume the guest after its checkpoint", self.name)
            self.job = None
            self._persist_quietly()
        else:
            await self._destroy_locked()

    async def recover_job(self) -> None:
        """After an xend restart: finish a save that had passed its commit
        point, roll back one that had not.  QEMU may be gone."""
        job = self.job
        if not job:
            return
        alive = self.qmp is not None and self.pid is not None and process.alive(self.pid)
        if job.get("op") == "migrate":
            from . import migration
            await migration.recover(self)
            return
        if job.get("op") != "save":
            log.error("%s: unknown interrupted job %r dropped", self.name, job)
            self.job = None
            self.persist()
            return
        tmp, target = job.get("tmp"), job.get("file")
        committed = job.get("phase") == "commit"
        if committed and tmp and os.path.exists(tmp):
            try:
                userpath.commit(tmp, target, "save file")
                checkpoint.fsync_dir(target)
            except InvalidRequest as e:     # something else took the target's place meanwhile
                log.error("%s: %s", self.name, e)
                committed = False
        if committed:
            log.info("%s: finished the save to %s interrupted by xend's exit", self.name, target)
            if job.get("checkpoint"):
                if alive:
                    async with self.lock:
                        await self._finish_save(bool(job.get("resume")), True)
                else:
                    self.job = None       # QEMU died: a crash, handled as one
                    self.persist()
                return
            async with self.lock:
                await self._destroy_locked()
            return
        log.info("%s: rolling back the save to %s interrupted by xend's exit", self.name, target)
        if tmp:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if alive:
            await self.cancel_outgoing(bool(job.get("resume")))
        self.job = None
        self.persist()

    async def cancel_outgoing(self, resume: bool) -> bool:
        """Stop QEMU's outgoing migration (a save or a live migration being
        rolled back), wait until it has really ended, then run the guest
        again if it ran before (*resume*), else leave it paused.  False if
        it should run but would not resume."""
        await self._quietly("migrate_cancel")
        # A migration that fails late stops the guest again: let it end
        # before anyone resumes the guest.
        await self._migration_settled()
        if not resume:
            self.paused = True
            return True
        if await self._quietly("cont") is not None:
            self.paused = False
            return True
        return False

    async def _load(self, info: "checkpoint.SaveInfo") -> None:
        """Restore: QEMU (started with ``-incoming defer``) reads the stream
        straight from the save file while a worker hashes the same bytes;
        the guest may run only if the digest matches."""
        loop = asyncio.get_running_loop()
        await self.qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True}]})
        fd = os.open(info.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.lseek(fd, info.stream_offset, os.SEEK_SET)
            # QEMU reads in 32 KiB steps: a wide readahead on its (shared)
            # file description keeps the disk ahead of it.
            os.posix_fadvise(fd, info.stream_offset, info.stream_length, os.POSIX_FADV_SEQUENTIAL)
            await self.qmp.send_fd(fd, "pyxen-restore")
        finally:
            os.close(fd)
        self._mig_status = None
        self._mig_changed.clear()
        verifier = checkpoint.Verifier(info)
        vtask = loop.run_in_executor(None, verifier.run)
        problem = None
        try:
            try:
                await self.qmp.execute("migrate-incoming", {"uri": "fd:pyxen-restore"})
                deadline = time.monotonic() + RESTORE_BASE + info.stream_length / RESTORE_RATE
                # QEMU's main loop is busy while it reads a file, so this waits
                # on events and on the process, not on query-migrate.
                while self._mig_status not in MIGRATION_DONE:
                    if not process.alive(self.pid):
                        problem = "QEMU exited while loading it"
                        break
                    if time.monotonic() > deadline:
                        problem = "QEMU did not finish loading it in time"
                        break
                    self._mig_changed.clear()
                    try:
                        await asyncio.wait_for(self._mig_changed.wait(), 0.5)
                    except asyncio.TimeoutError:
                        pass
                if problem is None and self._mig_status != "completed":
                    problem = f"QEMU could not load it (migration {self._mig_status})"
            except QMPError as e:
                problem = f"QEMU could not load it: {e}"
            self._marks["load"] = time.monotonic()
            # Even when QEMU failed, the checksum tells a damaged file (the
            # likely cause) from an incompatible one.
            intact = await vtask
            self._marks["verify"] = time.monotonic()
        except OSError as e:
            raise XendError(f"Unable to read save file {info.path}: {e.strerror}") from None
        except BaseException:
            verifier.cancel()
            raise
        if not intact:
            raise InvalidRequest(f"{info.path} is corrupt: the checksum of its QEMU state does not "
                                 f"match; domain {self.name} was not restored")
        if problem is not None:
            m = info.meta
            raise XendError(f"Cannot restore {info.path}: {problem} (saved by QEMU {m.get('qemu', '?')}, "
                            f"machine {m.get('machine', '?')}, {m.get('accel', '?')})"
                            + qemulog.reason(self.runtime().qemu_log, self.qemu_log_start))
        times = _phases(self._marks, ("qemu", "load", "verify"))
        log.info("%s: loaded %d bytes of saved state from %s (%s)", self.name, info.stream_length, info.path,
                 ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))

    # ------------------------------------------------------- CPU placement
    def apply_placement(self, initial: bool) -> None:
        """Scheduler weight/cap through cgroups; at start, the config's cpus."""
        try:
            cgroups.apply(self.uuid, self.pid, self.cfg.cpu_weight, self.cfg.cpu_cap, self._period_us())
        except cgroups.CgroupError as e:
            log.warning("%s: scheduler parameters not enforced: %s", self.name, e)
        if not initial or self.cfg.cpus is None:
            return
        specs = self.cfg.cpus if isinstance(self.cfg.cpus, list) else [self.cfg.cpus] * len(self.vcpu_tids)
        for tid, spec in zip(self.vcpu_tids, specs):
            self._pin(tid, host_cpus(spec))

    @staticmethod
    def _pin(tid: int, cpus: set[int]) -> None:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError as e:
            raise XendError(f"cannot pin vCPU thread {tid} to {format_cpuset(cpus)}: {e.strerror}") from None

    async def vcpu_pin(self, vcpu: str, spec: str) -> None:
        self._refuse_if_busy()
        async with self.lock:
            self._require_live()
            cpus = host_cpus(spec)
            if vcpu == "all":
                targets = self.vcpu_tids
            else:
                try:
                    n = int(vcpu)
                except ValueError:
                    raise InvalidRequest(f"Invalid VCPU {vcpu!r}") from None
                if not 0 <= n < len(self.vcpu_tids):
                    raise InvalidRequest(f"Invalid VCPU {n}: domain {self.name} has VCPUs 0-{len(self.vcpu_tids) - 1} online")
                targets = [self.vcpu_tids[n]]
            for tid in targets:
                self._pin(tid, cpus)

    async def sched_credit(self, weight: int | None, cap: int | None) -> None:
        self._refuse_if_busy()
        async with self.lock:
            if weight is not None:
                if not 1 <= weight <= 65535:
                    raise InvalidRequest(f"weight must be 1-65535, got {weight}")
                self.cfg.cpu_weight = weight
            if cap is not None:
                if not 0 <= cap <= 100 * (os.cpu_count() or 1):
                    raise InvalidRequest(f"cap must be 0 (none) to {100 * (os.cpu_count() or 1)}, got {cap}")
                self.cfg.cpu_cap = cap
            self.persist(config=True)
            self._enforce_sched()

    def _period_us(self) -> int:
        return max(1000, min(1_000_000, int(self.sedf["period"] * 1000)))

    def _enforce_sched(self) -> None:
        if self.pid and self.state == "running":
            try:
                cgroups.apply(self.uuid, self.pid, self.cfg.cpu_weight, self.cfg.cpu_cap, self._period_us())
            except cgroups.CgroupError as e:
                raise XendError(f"cannot apply scheduler parameters: {e}") from None

    def sedf_info(self) -> dict:
        period = self.sedf["period"]
        return {"period": period, "slice": self.cfg.cpu_cap * period / 100.0, "latency": self.sedf["latency"],
                "extratime": 0 if self.cfg.cpu_cap else 1, "weight": self.cfg.cpu_weight}

    async def sched_sedf(self, period=None, slice_=None, latency=None, extratime=None, weight=None) -> None:
        """SEDF on cgroups: a slice without extratime is a cap of slice/period;
        with extratime the domain may use spare CPU (no cap); weight is the share."""
        async with self.lock:
            cur = self.sedf_info()
            period = cur["period"] if period is None else float(period)
            slice_ = cur["slice"] if slice_ is None else float(slice_)
            extratime = cur["extratime"] if extratime is None else int(extratime)
            if not 1 <= period <= 1000:
                raise InvalidRequest(f"period must be 1-1000 ms, got {period:g}")
            if not 0 <= slice_ <= period:
                raise InvalidRequest(f"slice must be 0-{period:g} ms (the period), got {slice_:g}")
            if extratime not in (0, 1):
                raise InvalidRequest(f"extratime must be 0 or 1, got {extratime}")
            if weight is not None and int(weight) > 0:
                self.cfg.cpu_weight = min(65535, int(weight))
            self.cfg.cpu_cap = 0 if extratime or slice_ == 0 else max(1, round(100 * slice_ / period))
            self.sedf = {"period": period, "latency": cur["latency"] if latency is None else float(latency)}
            self.persist(config=True)
            self._enforce_sched()

    # ------------------------------------------------------- block hotplug
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
            self._require_live()
            if any(d.vdev == disk.vdev for d in self.cfg.disks):
                raise Conflict(f"Domain {self.name} already has a device {disk.vdev}")
            # The registry's create lock: no create or other attach can take
            # the same disk between the guard's check and the config update.
            async with self.reg._create_lock:
                self.reg.check_disk_target(disk)
                self.reg.check_sharing(self.name, [disk])
                self.cfg.disks.append(disk)
                self.persist(config=True)
            added: list[str] = []
            try:
                fdset = await confine.add_disk_fd(self.qmp, disk) if self.qemu_ident else None
                for node in qargv.disk_nodes(disk, fdset):
                    await self.qmp.execute("blockdev-add", node)
                    added.append(node["node-name"])
                await self.qmp.execute("device_add", qargv.disk_device_props(disk))
            except (QMPError, QmpTimeout, OSError, InvalidRequest) as e:
                for node in reversed(added):
                    try:
                        await self.qmp.execute("blockdev-del", {"node-name": node})
                    except Exception:
                        pass
                if self.qemu_ident:
                    await self._drop_disk_fd(disk.vdev)
                self.cfg.disks.remove(disk)
                self._persist_config_quietly()
                raise XendError(f"block-attach {disk.uname} as {disk.vdev} failed: {e}") from None
            log.info("%s: attached %s as %s (%s)", self.name, disk.uname, disk.vdev, disk.mode)

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
            self._require_live()
            disk = self._find_disk(str(ref))
            dev_id = f"vbd-{disk.vdev}"
            gone = self._device_gone[dev_id] = asyncio.Event()
            try:
                await self.qmp.execute("device_del", {"id": dev_id})
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
                self._device_gone.pop(dev_id, None)
            for node in (f"d-{disk.vdev}", f"f-{disk.vdev}"):
                try:
                    await self.qmp.execute("blockdev-del", {"node-name": node})
                except (QMPError, QmpTimeout) as e:
                    log.warning("%s: blockdev-del %s: %s", self.name, node, e)
            if self.qemu_ident:
                await self._drop_disk_fd(disk.vdev)
            self.cfg.disks.remove(disk)
            self.persist(config=True)
            log.info("%s: detached %s (%s)", self.name, disk.vdev, disk.uname)

    async def _drop_disk_fd(self, vdev: str) -> None:
        try:
            await confine.remove_disk_fd(self.qmp, vdev)
        except (QMPError, QmpTimeout) as e:
            log.warning("%s: cannot drop the descriptor of %s: %s", self.name, vdev, e)

    def _persist_config_quietly(self) -> None:
        try:
            self.persist(config=True)
        except Exception as e:
            log.error("%s: cannot persist config: %s", self.name, e)

    def devices(self, cls: str) -> list[dict]:
        """Devices of class vbd (the config's disks) or vif, as block-list / network-list show them."""
        if cls == "vif":
            return self.vif_devices()
        if cls != "vbd":
            return []
        out = []
        for i, d in enumerate(self.cfg.disks):
            try:
                idx = disk_number(d.vdev)
            except ConfigError:
                idx = i
            out.append({"idx": idx, "backend-id": 0, "handle": idx, "state": 4 if self.pid else 6,
                        "event-ch": 0, "ring-ref": 0,
                        "be-path": f"/local/domain/0/backend/vbd/{self.domid}/{idx}",
                        "dev": d.vdev, "uname": d.uname, "mode": d.mode, "type": d.devtype})
        return out

    async def io_stats(self) -> dict:
        """Block and network counters for xentop (block from QEMU, net from the taps)."""
        st = {"vbds": len(self.cfg.disks), "vbd_rd": 0, "vbd_wr": 0, "vbd_oo": 0, "vbd_rsect": 0,
              "vbd_wsect": 0, "nets": len(self.cfg.vifs), "net_tx": 0, "net_rx": 0}
        if self.qmp is not None and self.state == "running":
            try:
                for dev in await self.qmp.execute("query-blockstats", timeout=5):
                    b = dev.get("stats", {})
                    st["vbd_rd"] += b.get("rd_operations", 0)
                    st["vbd_wr"] += b.get("wr_operations", 0)
                    st["vbd_rsect"] += b.get("rd_bytes", 0) // 512
                    st["vbd_wsect"] += b.get("wr_bytes", 0) // 512
            except Exception as e:
                log.debug("%s: blockstats unavailable: %s", self.name, e)
        for devid, spec in self.vifs():
            name = self.reg.net.vif_name(self.domid, devid, spec)
            base = f"/sys/class/net/{name}/statistics"
            try:
                # The tap's receive side is what the domain transmitted.
                st["net_tx"] += int(open(f"{base}/rx_bytes").read())
                st["net_rx"] += int(open(f"{base}/tx_bytes").read())
            except OSError:
                pass
        return st
    def vif_devices(self) -> list[dict]:
        # No Xen rings or event channels here: those columns show -1, Xen's
        # own value for a field a device does not have.
        out = []
        for devid, spec in self.vifs():
            out.append({"idx": devid, "backend-id": 0, "handle": devid, "mac": spec.get("mac", ""),
                        "state": 4 if self.pid else 6, "event-ch": -1, "tx-ring-ref": -1,
                        "rx-ring-ref": -1, "be-path": f"/local/domain/0/backend/vif/{self.domid}/{devid}",
                        "vifname": self.reg.net.vif_name(self.domid, devid, spec),
                        "config": dict(spec)})
        return out

    # ------------------------------------------------------------ hotplug
    async def network_attach(self, spec: dict) -> int:
        """Plug a new vif into the running guest; returns its devid."""
        async with self.lock:
            self._require_live()
            if self.paused:
                raise Conflict(f"Domain {self.name} is paused; unpause it to attach a device")
            spec = dict(spec)
            names = {self.reg.net.vif_name(self.domid, d, s) for d, s in self.vifs()}
            devid = max(max(self.vif_devids, default=-1) + 1, self.vif_next_devid)
            self.vif_next_devid = devid + 1
            name = self.reg.net.vif_name(self.domid, devid, spec)
            if name in names:
                raise Conflict(f"Domain {self.name} already has a vif named {name}")
            with self.reg.mac_for(spec, self):
                tap, mtu = await self.reg.net.vif_up(self, devid, spec)
                try:
                    await self.qmp.execute("netdev_add", qargv.netdev_props(devid, tap))
                    try:
                        await self.qmp.execute("device_add", qargv.nic_props(
                            devid, spec, self.cfg.builder == "hvm", mtu))
                    except (QMPError, QmpTimeout):
                        await self._quiet_qmp("netdev_del", {"id": f"vif{devid}"})
                        raise
                except (QMPError, QmpTimeout) as e:
                    await self.reg.net.vif_down(self, devid, spec)
                    raise XendError(f"Device {devid} (vif) could not be connected. {e}") from None
                self.cfg.vifs.append(spec)
                self.vif_devids.append(devid)
                self.vifs_up.add(devid)
            self.persist(config=True)
            log.info("%s: vif %d attached (%s, %s)", self.name, devid, tap, spec["mac"])
            return devid

    async def network_detach(self, ref, force: bool = False) -> None:
        """Unplug vif *ref* (its devid): the guest releases the NIC, then its host side goes."""
        async with self.lock:
            self._require_live()
            try:
                devid = int(str(ref))
            except ValueError:
                raise InvalidRequest(f"Invalid device id {ref!r}") from None
            if devid not in self.vif_devids:
                raise InvalidRequest(f"Device {devid} not connected")
            i = self.vif_devids.index(devid)
            spec = self.cfg.vifs[i]
            nic = f"nic{devid}"
            gone = self._device_gone[nic] = asyncio.Event()
            try:
                await self.qmp.execute("device_del", {"id": nic})
                limit = 5 if force else self.reg.config["device-destroy-timeout"]
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
                self._device_gone.pop(nic, None)
            await self._quiet_qmp("netdev_del", {"id": f"vif{devid}"})
            del self.cfg.vifs[i]
            del self.vif_devids[i]
            self.vifs_up.discard(devid)
            self.persist(config=True)
            await self.reg.net.vif_down(self, devid, spec)
            log.info("%s: vif %d detached", self.name, devid)

    async def _quiet_qmp(self, cmd: str, args: dict) -> None:
        try:
            await self.qmp.execute(cmd, args)
        except (QMPError, QmpTimeout) as e:
            log.warning("%s: %s %s: %s", self.name, cmd, args, e)

    def vcpu_info(self) -> list[dict]:
        host = set(range(os.cpu_count() or 1))
        out = []
        for i in range(max(qargv.max_vcpus(self.cfg), len(self.vcpu_tids))):
            if i < len(self.vcpu_tids) and i < self.cfg.vcpus and self.pid:
                tid = self.vcpu_tids[i]
                st, secs, cpu = process.thread_stat(self.pid, tid)
                aff = process.thread_affinity(tid)
                running = st == "R" and not self.paused
                out.append({"vcpu": i, "online": True, "cpu": cpu, "running": running,
                            "blocked": not running and not self.paused, "paused": self.paused,
                            "cpu_time": secs, "affinity": affinity_text(aff, host)})
            else:
                out.append({"vcpu": i, "online": False, "cpu": -1, "running": False, "blocked": False,
                            "paused": True, "cpu_time": 0.0, "affinity": "any cpu"})
        return out

    # ---------------------------------------------------------------- stats
    def vcpu_stats(self) -> list[tuple[str, float, int]]:
        if not self.pid:
            return []
        return [process.thread_stat(self.pid, t) for t in self.vcpu_tids]

    def flags(self, stats: list | None = None) -> str:
        if self.state != "running" or self.paused:
            stats = []
        elif stats is None:
            stats = self.vcpu_stats()
        running = any(s[0] == "R" for s in stats)
        f = ["-"] * 6
        if self.state == "running" and not self.paused:
            f[0 if running else 1] = "r" if running else "b"
        if (self.paused and self.state == "running") or self.state == "incoming":
            f[2] = "p"       # an arriving migration is paused until the source commits
        if self.state == "shutdown":
            f[3] = "s"
        if self.state == "crashed":
            f[4] = "c"
        if self.state == "dying":
            f[5] = "d"
        return "".join(f)

    def cpu_time(self, stats: list | None = None) -> float:
        return sum(s[1] for s in (self.vcpu_stats() if stats is None else stats))

    def info(self) -> dict:
        stats = self.vcpu_stats()          # one /proc read per vCPU for both fields
        state = self.flags(stats)
        return {
            "domid": self.domid, "name": self.name, "uuid": self.uuid,
            "memory": self.cfg.memory, "maxmem": self.cfg.maxmem or self.cfg.memory,
            "vcpus": qargv.max_vcpus(self.cfg), "online_vcpus": self.cfg.vcpus,
            "state": state, "status": self.status_code(), "cpu_time": self.cpu_time(stats),
            "start_time": self.start_time, "up_time": time.time() - self.start_time,
            "shutdown_reason": self.shutdown_reason, "accel": self.accel,
            "cpu_weight": self.cfg.cpu_weight, "cpu_cap": self.cfg.cpu_cap, "sedf": self.sedf_info(),
            "lifecycle": self.state,
        }

    def status_code(self) -> int:
        # Xen's (status N): 0 halted 1 paused 2 running 3 suspended 4 shutdown 5 crashed 6 unknown
        if self.state == "running":
            return 1 if self.paused else 2
        return {"shutdown": 4, "crashed": 5, "dying": 4, "creating": 6}.get(self.state, 6)

    def sxpr(self) -> list:
        """The domain as Xen's (domain ...) SXP, for ``xm list -l``."""
        info = self.info()
        cfg = self.cfg.to_sxp()
        fields = {item[0]: item for item in cfg[1:] if isinstance(item, list) and item and item[0] != "device"}
        out: list = ["domain", ["domid", self.domid], ["uuid", self.uuid], ["vcpus", self.cfg.vcpus],
                     ["cpu_weight", self.cfg.cpu_weight], ["cpu_cap", self.cfg.cpu_cap],
                     ["memory", self.cfg.memory], ["maxmem", info["maxmem"]], ["name", self.name],
                     ["on_poweroff", self.cfg.on_poweroff], ["on_reboot", self.cfg.on_reboot],
                     ["on_crash", self.cfg.on_crash]]
        for k in ("maxvcpus", "cpus", "console", "description"):
            if k in fields:
                out.append(fields[k])
        out.append(fields["image"])
        out += [item for item in cfg[1:] if isinstance(item, list) and item and item[0] == "device"]
        out += [["status", info["status"]], ["state", info["state"]],
                ["shutdown_reason", SHUTDOWN_REASONS.get(self.shutdown_reason or "", 0)],
                ["cpu_time", round(info["cpu_time"], 6)], ["online_vcpus", info["online_vcpus"]],
                ["up_time", round(info["up_time"], 2)], ["start_time", round(self.start_time, 2)]]
        return out


def host_cpus(spec: str) -> set[int]:
    """A cpus spec ('0-3,^1', 'all') as host CPUs; refuses one naming none of them."""
    host = set(range(os.cpu_count() or 1))
    try:
        cpus = parse_cpuset(str(spec)) & host
    except ConfigError as e:
        raise InvalidRequest(str(e)) from None
    if not cpus:
        raise InvalidRequest(f"cpus {spec!r} names no CPU of this host (it has {format_cpuset(host)})")
    return cpus


def affinity_text(cpus: set[int], host: set[int]) -> str:
    if not cpus:
        return "no cpus"
    if host <= cpus:
        return "any cpu"
    return format_cpuset(cpus)


def _save_target(path: str) -> str:
    """Where ``xm save`` may write: the rule of every user-named path."""
    return userpath.check(path, "save file")


def _phases(marks: dict, order: tuple) -> dict:
    """Seconds each step took, from the monotonic times it ended."""
    out, prev = {}, marks["start"]
    for k in order:
        if k in marks:
            out[k] = round(marks[k] - prev, 3)
            prev = marks[k]
    return out
