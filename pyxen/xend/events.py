"""What QEMU tells xend about a domain, and what xend does about it: run
state changes, guest shutdown, reboot and panic (the on_* policy of
lifecycle.py applied), QEMU's own death, device removals."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid as uuidlib

from .. import faults
from ..config.domain import DomainConfig
from ..hypervisor.qemu import process
from ..hypervisor.qemu.monitor import QMPError
from . import lifecycle
from .errors import XendError
from .lifecycle import State

log = logging.getLogger("pyxen.domain")


class DomainEvents:
    """Mixed into Domain: QEMU's events and the policy applied to them."""

    async def on_event(self, ev: dict) -> None:
        name, data = ev.get("event"), ev.get("data", {})
        if name == "MIGRATION":
            return          # the monitor's migration stream follows these
        if name in ("STOP", "RESUME"):
            ts = ev.get("timestamp") or {}
            self.last_runstate_change[name] = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
        if name in ("STOP", "RESUME") and (self.job or self.state == State.INCOMING):
            return        # the job stops and resumes the guest itself
        reason = lifecycle.guest_event(name, data, self.shutdown_reason == "halt")
        if name == "STOP" and self.state == State.RUNNING and not self.applying_policy:
            self.paused = True
        elif name == "RESUME":
            self.paused = False
        elif reason is not None:
            asyncio.create_task(self.guest_exited(reason))
        elif name == "RESET" and data.get("guest"):
            if lifecycle.reboot_in_place(self.cfg.on_reboot):
                log.info("%s: guest rebooted; on_reboot=%s", self.name, self.cfg.on_reboot)
                self.start_time = time.time()
                self.persist_quietly()
            else:
                asyncio.create_task(self.guest_exited("reboot"))
        elif name == "DEVICE_DELETED":
            self.unplugs.deleted(data.get("device") or "")
        if name in ("STOP", "RESUME"):
            self.persist_quietly()

    async def guest_exited(self, reason: str) -> None:
        """The guest powered off, rebooted or panicked: apply its on_* action."""
        if self.applying_policy or self.state != State.RUNNING:
            return
        self.applying_policy = True
        try:
            async with self.lock:
                setting = lifecycle.configured(reason, self.cfg.on_poweroff, self.cfg.on_reboot,
                                               self.cfg.on_crash)
                faults.point("guest-exit")
                log.info("%s: guest %s; %s=%s", self.name, reason, lifecycle.setting_name(reason), setting)
                self.shutdown_reason = reason
                self.shutdown_requested = None      # whatever was asked has happened
                action = lifecycle.guest_stopped(reason, setting, time.time() - self.start_time,
                                                 self.config["minimum-restart-time"],
                                                 enable_dump=self.config["enable-dump"])
                if action.note:
                    log.error("%s: %s", self.name, action.note)
                if action.coredump:
                    await self.coredump_locked(None)
                if action.kind == "rename-restart":
                    await self._rename_restart_locked(reason)
                elif action.kind == "restart":
                    if action.reset:
                        await self.monitor.system_reset()
                    await self.monitor.cont()
                    self.shutdown_reason = None
                    self.paused = False
                    self.start_time = time.time()
                    self.persist()
                elif action.kind == "preserve":
                    self.state = lifecycle.preserved_state(reason)
                    self.persist()
                    self.halted.set()
                else:
                    await self.destroy_locked()
        except (QMPError, XendError, OSError) as e:
            log.error("%s: applying on_%s failed: %s", self.name, reason, e)
        finally:
            self.applying_policy = False

    def on_exit(self) -> None:
        self.exit_watch = None
        if not self.expect_exit:
            asyncio.get_running_loop().create_task(self.qemu_died())

    async def on_qmp_gone(self) -> None:
        if self.expect_exit or self.pid is None:
            return
        if not process.alive(self.pid):
            # A task of its own: handling the death closes this QMP session,
            # whose watcher task is the one calling us.
            asyncio.get_running_loop().create_task(self.qemu_died())

    async def qemu_died(self) -> None:
        """QEMU went away unbidden: on_crash decides what follows."""
        # A create or restore whose QEMU dies fails, and its caller rolls it
        # back: on_crash=restart must not boot a domain that never started.
        if self.expect_exit or self.state in (State.DYING, State.CREATING) or self.gone.is_set():
            return
        self.expect_exit = True
        log.error("%s: QEMU (pid %s) died unexpectedly; on_crash=%s", self.name, self.pid, self.cfg.on_crash)
        async with self.lock:
            await self.release()
            self.shutdown_reason = "crash"
            action = lifecycle.qemu_died(self.cfg.on_crash, time.time() - self.start_time,
                                         self.config["minimum-restart-time"])
            if action.note:
                log.error("%s: %s", self.name, action.note)
            if action.kind == "restart":
                try:
                    self.state = State.CREATING
                    self.persist()
                    await self.start(paused=False)
                    return
                except Exception as e:
                    log.error("%s: restart after crash failed: %s", self.name, e)
            if action.kind == "preserve":
                self.state = State.CRASHED
                self.pid = None
                self.persist()
                self.halted.set()
                return
            self.finish_destroy()

    async def _rename_restart_locked(self, reason: str) -> None:
        """Keep this (stopped) domain as Domain-<uuid>; start a fresh one under the name."""
        cfg = DomainConfig.from_sxp(self.cfg.to_sxp())
        cfg.uuid = str(uuidlib.uuid4())
        self.cfg.name = f"Domain-{self.uuid}"
        self.state = lifecycle.preserved_state(reason)
        self.persist(config=True)
        self.halted.set()
        log.info("%s: preserved as %s; restarting", cfg.name, self.cfg.name)
        asyncio.get_running_loop().create_task(self.services.create(cfg))
