"""The typed QEMU monitor: one method per QMP command xend sends.

Everything xend asks of a running QEMU goes through :class:`Monitor`, so
three policies live in one place:

* timeouts: every command has a deadline (one hung QEMU must not hang
  ``xm list``); :data:`QUICK`, :data:`NORMAL` and :data:`LONG` name them;
* logging: each command is logged at DEBUG with its arguments, except the
  arguments a command marks secret (the VNC password of ``set_password``),
  which are never written anywhere;
* the migration stream: QEMU's migration status names are defined once
  here (:data:`MIGRATION_DONE`, :data:`MIGRATION_BUSY`), and
  :class:`MigrationStream` — start, wait for completion, cancel, settle,
  status events — serves save, restore and both ends of a live migration.

The transport (connection, events, the disconnect callback) is
:class:`pyxen.hypervisor.qemu.qmp.QmpSession`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from .qmp import QmpSession, QMPError, QmpTimeout  # noqa: F401  (QMPError, QmpTimeout re-exported)

log = logging.getLogger("pyxen.qmp")

QUICK = 5.0        # seconds: a command that must not hold up a listing or a teardown
NORMAL = 15.0      # the default deadline
LONG = 600.0       # a guest memory dump
SETTLE = 10.0      # how long an outgoing migration may take to end after a cancel

# QEMU's migration states (qapi/migration.json, MigrationStatus).
MIGRATION_DONE = ("completed", "failed", "cancelled")
MIGRATION_BUSY = ("setup", "active", "cancelling", "device", "pre-switchover", "wait-unplug")

# The runstates in which a running domain counts as paused (query-status):
# a domain created paused (-p) never ran, which QEMU calls "prelaunch".
PAUSED_STATES = ("paused", "suspended", "prelaunch")

_SECRET = "<secret>"


class Monitor:
    """One domain's QEMU monitor."""

    def __init__(self, name: str, on_event: Callable[[dict], Awaitable[None]] | None = None,
                 on_disconnect: Callable[[], Awaitable[None]] | None = None):
        self.name = name
        self._on_event = on_event
        self.session = QmpSession(name, on_event=self._event, on_disconnect=on_disconnect)
        self.migration = MigrationStream(self)

    async def connect(self, path: str) -> None:
        await self.session.connect(path)

    async def close(self) -> None:
        """Drop the connection (QEMU keeps running)."""
        await self.session.close()

    async def _event(self, ev: dict) -> None:
        if ev.get("event") == "MIGRATION":
            self.migration.note((ev.get("data") or {}).get("status"))
        if self._on_event is not None:
            await self._on_event(ev)

    async def _call(self, cmd: str, args: dict | None = None, timeout: float = NORMAL,
                    secret: tuple[str, ...] = ()) -> Any:
        shown = {k: (_SECRET if k in secret else v) for k, v in (args or {}).items()}
        log.debug("%s: qmp %s %s", self.name, cmd, shown or "")
        res = await self.session.execute(cmd, args, timeout)
        log.debug("%s: qmp %s -> %s", self.name, cmd, res)
        return res

    # ------------------------------------------------------------ run state
    async def cont(self) -> None:
        await self._call("cont")

    async def stop(self) -> None:
        await self._call("stop")

    async def system_reset(self) -> None:
        await self._call("system_reset")

    async def system_powerdown(self) -> None:
        await self._call("system_powerdown")

    async def quit(self) -> None:
        await self._call("quit", timeout=QUICK)

    async def status(self) -> str:
        """QEMU's runstate ("running", "paused", "shutdown", "postmigrate" ...)."""
        return str((await self._call("query-status")).get("status"))

    async def vcpu_threads(self) -> list[int]:
        """The host thread id of each vCPU, by CPU index."""
        cpus = await self._call("query-cpus-fast")
        return [c["thread-id"] for c in sorted(cpus, key=lambda c: c["cpu-index"])]

    async def version(self) -> str:
        q = (await self._call("query-version")).get("qemu", {})
        return f"{q.get('major')}.{q.get('minor')}.{q.get('micro')}"

    async def machine_type(self) -> str:
        """The machine type QEMU runs (a save or migration must rebuild the same)."""
        t = await self._call("qom-get", {"path": "/machine", "property": "type"})
        return str(t).removesuffix("-machine")

    # ------------------------------------------------------- guest control
    async def balloon(self, mib: int) -> None:
        await self._call("balloon", {"value": mib << 20})

    async def send_keys(self, *qcodes: str) -> None:
        """Press the keys together (e.g. "ctrl", "alt", "delete")."""
        await self._call("send-key", {"keys": [{"type": "qcode", "data": k} for k in qcodes]})

    async def dump_guest_memory(self, fdname: str) -> None:
        await self._call("dump-guest-memory", {"paging": False, "protocol": f"fd:{fdname}"}, timeout=LONG)

    async def human_command(self, line: str) -> str:
        """One HMP command line; its text output."""
        return str(await self._call("human-monitor-command", {"command-line": line}))

    # ------------------------------------------------------------- devices
    async def device_add(self, props: dict) -> None:
        await self._call("device_add", props)

    async def device_del(self, dev_id: str) -> None:
        await self._call("device_del", {"id": dev_id})

    async def netdev_add(self, props: dict) -> None:
        await self._call("netdev_add", props)

    async def netdev_del(self, netdev_id: str) -> None:
        await self._call("netdev_del", {"id": netdev_id})

    async def blockdev_add(self, node: dict) -> None:
        await self._call("blockdev-add", node)

    async def blockdev_del(self, node_name: str) -> None:
        await self._call("blockdev-del", {"node-name": node_name})

    async def snapshot_internal(self, nodes: list[str], tag: str) -> None:
        """One internal snapshot *tag* of each qcow2 node, all or none (a
        QMP transaction): the disks of a snapshot are of one instant."""
        await self._call("transaction", {"actions": [
            {"type": "blockdev-snapshot-internal-sync", "data": {"device": n, "name": tag}} for n in nodes]},
            timeout=LONG)

    async def blockdev_snapshot(self, node: str, overlay: str) -> None:
        """Put the (added, backing-less) *overlay* node on top of *node*: the
        guest writes to the overlay from now on, *node* becomes its backing."""
        await self._call("blockdev-snapshot", {"node": node, "overlay": overlay})

    async def query_block(self) -> list[dict]:
        return await self._call("query-block")

    async def snapshot_delete_internal(self, node: str, tag: str) -> None:
        await self._call("blockdev-snapshot-delete-internal-sync", {"device": node, "name": tag}, timeout=LONG)

    async def blockstats(self) -> list[dict]:
        return await self._call("query-blockstats", timeout=QUICK)

    # ---------------------------------------------- block jobs, NBD exports
    # Storage migration (pyxen/xend/storagemigrate.py): the target exports
    # its new disks over NBD, the source mirrors into them.
    async def blockdev_mirror(self, job_id: str, device: str, target: str, sync: str,
                              copy_mode: str = "write-blocking", speed: int = 0) -> None:
        """Mirror node *device* into node *target* (sync ``full`` or
        ``top``).  ``write-blocking``: once ready, every guest write reaches
        both before it completes, so the final sync at the switch-over has
        next to nothing left to copy."""
        await self._call("blockdev-mirror", {"job-id": job_id, "device": device, "target": target,
                                             "sync": sync, "copy-mode": copy_mode, "speed": speed,
                                             "auto-finalize": True, "auto-dismiss": False})

    async def query_jobs(self) -> list[dict]:
        """Every job with its status, progress and (once concluded) error:
        a job kept until dismissed still says why it failed."""
        return await self._call("query-jobs", timeout=QUICK)

    async def job_dismiss(self, job_id: str) -> None:
        await self._call("job-dismiss", {"id": job_id})

    async def block_job_cancel(self, job_id: str, force: bool = False) -> None:
        """On a ready mirror without *force*: finish with a point-in-time
        copy (the source keeps its disk); with *force*: abandon it."""
        await self._call("block-job-cancel", {"device": job_id, "force": force})

    async def nbd_server_start(self, addr: dict, tls_creds: str | None = None,
                               tls_authz: str | None = None) -> None:
        """*addr*: a SocketAddressLegacy (``{"type": "fd", "data": {"str":
        NAME}}`` for a listening socket handed over with :meth:`send_fd`)."""
        args: dict = {"addr": addr}
        if tls_creds:
            args["tls-creds"] = tls_creds
        if tls_authz:
            args["tls-authz"] = tls_authz
        await self._call("nbd-server-start", args)

    async def object_add(self, qom_type: str, obj_id: str, **props) -> None:
        await self._call("object-add", {"qom-type": qom_type, "id": obj_id, **props})

    async def object_del(self, obj_id: str) -> None:
        await self._call("object-del", {"id": obj_id})

    async def block_export_add(self, export_id: str, node: str, name: str, writable: bool = True) -> None:
        await self._call("block-export-add", {"type": "nbd", "id": export_id, "node-name": node,
                                              "name": name, "writable": writable})

    async def block_export_del(self, export_id: str) -> None:
        await self._call("block-export-del", {"id": export_id, "mode": "hard"})

    async def nbd_server_stop(self) -> None:
        await self._call("nbd-server-stop")

    # ------------------------------------------------------------- display
    async def set_vnc_password(self, password: str, display: str) -> None:
        await self._call("set_password", {"protocol": "vnc", "password": password, "display": display},
                         secret=("password",))

    async def vnc_servers(self) -> list[dict]:
        return await self._call("query-vnc-servers")

    # --------------------------------------------------------- descriptors
    async def send_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a copy of *fd* under *name* (``fd:<name>`` in a URI).
        The caller keeps, and closes, its own copy."""
        self.session.send_fd_scm(fd)
        await self._call("getfd", {"fdname": name})

    async def close_fd(self, name: str) -> None:
        await self._call("closefd", {"fdname": name})

    async def add_fd(self, fd: int, opaque: str) -> int:
        """Put a copy of *fd* into a new fdset; returns the fdset id."""
        self.session.send_fd_scm(fd)
        return int((await self._call("add-fd", {"opaque": opaque}))["fdset-id"])

    async def fdsets(self) -> list[dict]:
        return await self._call("query-fdsets")

    async def remove_fdset(self, fdset_id: int) -> None:
        await self._call("remove-fd", {"fdset-id": fdset_id})

    # ----------------------------------------------------------- migration
    async def migrate_set_capabilities(self, **caps: bool) -> None:
        await self._call("migrate-set-capabilities", {"capabilities": [
            {"capability": k.replace("_", "-"), "state": v} for k, v in caps.items()]})

    async def migrate_set_parameters(self, **params: int) -> None:
        await self._call("migrate-set-parameters", {k.replace("_", "-"): v for k, v in params.items()})

    async def migrate(self, uri: str) -> None:
        await self._call("migrate", {"uri": uri})

    async def migrate_incoming(self, uri: str) -> None:
        await self._call("migrate-incoming", {"uri": uri})

    async def migrate_cancel(self) -> None:
        await self._call("migrate_cancel")

    async def migrate_continue(self, state: str = "pre-switchover") -> None:
        """Go on from a pause the capabilities asked for (pause-before-switchover:
        storage migration, live snapshots)."""
        await self._call("migrate-continue", {"state": state})

    async def query_migrate(self) -> dict:
        return await self._call("query-migrate", timeout=SETTLE)


async def quietly(call: Awaitable[Any]) -> Any:
    """Await a monitor call whose failure is not worth more than a debug
    line (a best-effort cancel, a progress query); None on failure."""
    try:
        return await call
    except Exception as e:
        log.debug("monitor call failed: %s", e)
        return None


class MigrationStream:
    """QEMU's migration stream, either way: the status QEMU's MIGRATION
    events report, and the steps every user of the stream takes."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor
        self.status: str | None = None
        self.changed = asyncio.Event()

    def note(self, status: str | None) -> None:
        self.status = status
        self.changed.set()

    def _reset(self) -> None:
        self.status = None
        self.changed.clear()

    async def enable_events(self, **caps: bool) -> None:
        """Status events on (and any other capability given)."""
        await self.monitor.migrate_set_capabilities(events=True, **caps)

    async def start_out(self, fdname: str) -> None:
        """Start sending the stream into descriptor *fdname* (sent before)."""
        self._reset()
        await self.monitor.migrate(f"fd:{fdname}")

    async def start_in(self, fdname: str) -> None:
        """Start loading the stream from descriptor *fdname* (QEMU was
        started with ``-incoming defer``)."""
        self._reset()
        await self.monitor.migrate_incoming(f"fd:{fdname}")

    async def wait_done(self, timeout: float | None, tick: float = 0.5, poll: bool = True,
                        check: Callable[[], bool] | None = None) -> str | None:
        """Until QEMU reports the stream done: its final status, or None
        when *timeout* passed or *check* (called each *tick*; it may also
        raise) returned False.  Events wake this at once; with *poll*, a
        tick without one asks QEMU, should an event go missing.  (A QEMU
        loading a file has a busy main loop: restore waits without
        polling.)"""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.status not in MIGRATION_DONE:
            if check is not None and not check():
                return None
            if deadline is not None and time.monotonic() > deadline:
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), tick)
            except asyncio.TimeoutError:
                if poll:
                    info = await quietly(self.monitor.query_migrate()) or {}
                    if info.get("status") in MIGRATION_DONE:
                        self.status = info["status"]
        return self.status

    async def final_info(self, timeout: float = 30.0, interval: float = 0.02) -> dict:
        """QEMU's query-migrate once the stream is done (its figures:
        downtime, total time, passes); {} if it is not done in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await quietly(self.monitor.query_migrate()) or {}
            if info.get("status") in MIGRATION_DONE:
                return info
            await asyncio.sleep(interval)
        return {}

    async def error(self, status: str | None) -> str:
        """Why the stream failed, in QEMU's words when it has any."""
        info = await quietly(self.monitor.query_migrate()) or {}
        return info.get("error-desc") or f"migration {status}"

    async def settled(self, alive: Callable[[], bool], timeout: float = SETTLE) -> None:
        """Until the outgoing stream is no longer under way (a migration
        that fails late stops the guest again: nobody may resume it before)."""
        deadline = time.monotonic() + timeout
        while alive():
            info = await quietly(self.monitor.query_migrate())
            if info is None or info.get("status") not in MIGRATION_BUSY:
                return
            if time.monotonic() > deadline:
                log.warning("%s: migration still under way after %.0f s", self.monitor.name, timeout)
                return
            await asyncio.sleep(0.05)

    async def cancel(self, alive: Callable[[], bool]) -> None:
        """Cancel the outgoing stream and wait until it has really ended."""
        await quietly(self.monitor.migrate_cancel())
        await self.settled(alive)
