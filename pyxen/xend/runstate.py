"""The run-state operations a user asks of a domain: pause and unpause,
shutdown and reboot requests, SysRq, core dumps, rename, and the HVM
display and device-model monitor.  (Destroy is the instance's own: see
domain.py.)"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from .. import faults
from ..config import hvmopts as hvmcfg
from ..hypervisor.qemu.monitor import QMPError
from . import durable, firmware, guestreach, userpath
from .errors import Conflict, InvalidRequest, XendError
from .lifecycle import State

log = logging.getLogger("pyxen.domain")


class DomainRunState:
    """Mixed into Domain."""

    async def sysrq(self, key: str) -> None:
        if len(key) != 1 or not key.isalnum():
            raise InvalidRequest(f"Invalid sysrq key {key!r}")
        async with self.lock:
            self.require_live("sysrq")
            await self.monitor.send_keys("alt", "sysrq", key.lower())

    async def dump_core(self, path: str | None, live: bool, crash: bool, reset: bool) -> str:
        async with self.lock:
            self.require_live("dump-core")
            path = await self.coredump_locked(path, live)
            if crash:
                await self.destroy_locked()
            elif reset:
                await self.monitor.system_reset()
            return path

    async def coredump_locked(self, path: str | None, live: bool = False) -> str:
        if path is None:
            d = self.paths.dump_dir
            d.mkdir(parents=True, exist_ok=True)
            path = str(d / time.strftime(f"%Y-%m%d-%H%M.%S-{self.name}.{self.domid}.core"))
        path = userpath.check(path, "core file")
        was_paused = self.paused
        if not live and not was_paused:
            await self.monitor.stop()
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
                    await self.monitor.send_fd(fd, "pyxen-dump")
                finally:
                    os.close(fd)
                await self.monitor.dump_guest_memory("pyxen-dump")
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
            if not live and not was_paused and self.state == State.RUNNING:
                await self.monitor.cont()
        log.info("%s: core dumped to %s", self.name, path)
        return path

    async def rename(self, new: str) -> None:
        async with self.lock:
            self.reservations.check_name_free(new, self)
            old = self.cfg.name
            cluster = self.services.cluster
            if cluster is not None:
                cluster.rename(self.uuid, old, new)    # the name is the cluster's too
            try:
                async with durable.change(self, "rename", config=True):
                    self.cfg.name = new
            except Exception:
                if cluster is not None:
                    cluster.rename(self.uuid, new, old)
                raise
            log.info("%s: renamed to %s", old, new)

    async def pause(self) -> None:
        self.refuse_if_busy("pause")
        async with self.lock:
            self.require_live("pause")
            was = self.paused
            async with durable.change(self, "pause") as ch:
                await self.monitor.stop()
                if not was:
                    ch.undo(self.monitor.cont)
                self.paused = True

    async def unpause(self) -> None:
        self.refuse_if_busy("unpause")
        cluster = self.services.cluster
        if cluster is not None:
            cluster.before_unpause(self)
        async with self.lock:
            self.require_live("unpause")
            was = self.paused
            async with durable.change(self, "unpause") as ch:
                await self.monitor.cont()
                if was:
                    ch.undo(self.monitor.stop)
                self.paused = False

    async def shutdown(self, reason: str) -> None:
        """Ask the guest to power off, halt or reboot (it does the work)."""
        self.refuse_if_busy("shutdown")
        if (why := guestreach.shutdown_refusal(self.cfg, reason)) is not None:
            raise Conflict(why)
        async with self.lock:
            self.require_live("shutdown")
            # The request is recorded before the guest is asked (a guest's
            # shutdown cannot be taken back): on a full disk nothing happens.
            async with durable.change(self, "reboot" if reason == "reboot" else "shutdown"):
                self.shutdown_reason = reason if reason == "halt" else None
                self.shutdown_requested = reason
            if self.paused:
                await self.monitor.cont()
                self.paused = False
            if reason == "reboot":
                # The guest's init maps Ctrl-Alt-Del to a clean reboot.
                await self.monitor.send_keys("ctrl", "alt", "delete")
            else:
                await self.monitor.system_powerdown()
                faults.point("shutdown-requested")
                # Like a request left in xenstore, the shutdown stays pending:
                # a guest still booting (no acpid yet) misses one button press,
                # so press again until it acts or the request times out.
                if self.shutdown_request is None or self.shutdown_request.done():
                    self.shutdown_request = asyncio.get_running_loop().create_task(self._repress())

    async def _repress(self, interval: float = 3.0) -> None:
        deadline = time.monotonic() + self.config["device-destroy-timeout"]
        while time.monotonic() < deadline:
            await asyncio.sleep(interval)
            if self.gone.is_set() or self.state != State.RUNNING or self.monitor is None or self.applying_policy:
                return
            if self.paused:
                continue
            try:
                await self.monitor.system_powerdown()
            except Exception:
                return

    # ------------------------------------------------------------------ HVM
    def vnc_address(self):
        """Where xend's web console relay reaches the screen: the Unix VNC
        socket every HVM domain with graphics has; None for the others."""
        if self.cfg.builder != "hvm" or self.state != State.RUNNING or not hvmcfg.graphics(self.cfg.hvm):
            return None
        return str(self.runtime().vnc_sock)

    def vnc_display(self) -> tuple[str, int] | None:
        """The user's VNC server (host, port), as xm vncviewer --print shows it."""
        if self.vnc is None or self.state != State.RUNNING:
            return None
        return self.vnc["host"], self.vnc["port"]

    async def qemu_monitor(self, command: str) -> str:
        return await firmware.monitor(self.feature_context(), command)
