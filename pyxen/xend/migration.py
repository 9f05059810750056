"""Live migration: ``xm migrate`` on the source (the target's end, the
relocation server, is relocation.py; manual §8.2, §9.3).

One TCP connection carries everything (so one firewall rule on port 8002
is all it takes): the control messages and QEMU's migration stream,
framed by ``relocproto``.  The connection is TLS with a certificate on
both ends, checked against the pool's CA (``pyxen.pki``); plaintext only
when both xend-configs say ``(xend-relocation-tls no)``.  Each QEMU gets
one end of a socketpair; xend moves the stream between that and the
connection (QEMU 7.2's own TLS cannot share a connection with xend's
messages).

Who runs the domain, at every step (never both, never neither):

* until the target has loaded the whole stream, the source's QEMU is the
  domain: any failure (target refuses, dies, link breaks, QEMU fails)
  cancels the migration and the source resumes the guest (unless it was
  paused before), and the target destroys what it prepared;
* the source then records ``commit`` durably and tells the target to run
  it; the target marks it running (durably) and resumes it; on its
  confirmation the source destroys its copy;
* if the link breaks after ``commit`` was sent but before the target
  confirmed, the source cannot know whether the target runs the guest, so
  it keeps its copy *paused* and says so.

To this same host (``localhost``, its own address or cluster name) the
same path is taken, to this xend's own relocation server; the target end
finds the migration's id in the source's job and makes the arriving
domain the source's twin (twins.py).  There the commit is never
uncertain: both ends share one process and one store.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time

from .. import faults
from ..hypervisor.qemu.monitor import quietly
from . import durable, firmware, jobs, storagemigrate, twins
from . import relocproto as rp
from .errors import InvalidRequest, XendError
from .relolink import (LINK_TIMEOUT, MigrationError, _connect, _connect_loopback, client_context,
                       run_blocking, socketpair, tls_files)

log = logging.getLogger("pyxen.domain.migrate")

PREPARE_TIMEOUT = 120.0     # the target starts QEMU, builds vifs
LOAD_TIMEOUT = 120.0        # the target QEMU finishes loading after E
DEFAULT_DOWNTIME_MS = 50    # start of the downtime ramp (QEMU's default is 300)
MAX_RAMPED_DOWNTIME_MS = 2000
RAMP_EVERY_PASSES = 4       # double the allowed downtime after this many passes
UNLIMITED = 1 << 40         # bytes/s: QEMU's 128 MiB/s default would cap a LAN
# Early migrations: stream bytes sent before the target's QEMU listens.  A
# booted guest's first pass is larger (its kernel alone), so QEMU is still
# in that pass when it waits -- never past a switch-over; and 16 MiB cover
# the target's prepare at this link's speed (bench/README.md).
EARLY_GATE = 16 << 20


async def migrate(dom, host: str, port: int | None = None, live: bool = False,
                  resource: float | None = None, downtime: int | None = None,
                  copy_storage: bool = False, shared_disks: str | None = None) -> dict:
    """Move running domain *dom* to the xend at *host*.  Returns what
    happened (times, bytes, downtime); raises MigrationError saying where
    the domain is when anything fails."""
    config = dom.config
    port = port or config["xend-relocation-port"]
    if not host or not isinstance(host, str) or len(host) > 255 or any(c.isspace() for c in host):
        raise InvalidRequest(f"invalid destination host {host!r}")
    if not 0 < int(port) < 65536:
        raise InvalidRequest(f"invalid relocation port {port}")
    if resource is not None and resource <= 0:
        raise InvalidRequest(f"the bandwidth limit must be positive, got {resource}")
    if downtime is not None and not 1 <= downtime <= 60000:
        raise InvalidRequest(f"the downtime limit must be 1-60000 ms, got {downtime}")
    shared = [v for v in (shared_disks or "").replace(",", " ").split() if v]
    if shared and not copy_storage:
        raise InvalidRequest("--shared-disk only makes sense with --copy-storage")
    if shared:
        storagemigrate.check_shared(dom.booted_config(), shared)
    snaps = sorted(dom.snapshot_doc().get("snapshots") or {})
    if copy_storage and snaps:
        storagemigrate.check_snapshots(dom.booted_config(), dom.snapshot_doc(), shared)
    ctx = client_context(config, dom.paths, "cannot migrate securely")
    try:
        # (A name lookup: not on the event loop.)
        here = await run_blocking(twins.loopback, host, config["xend-relocation-address"],
                                  lambda: client_context(config, dom.paths, "cannot migrate securely"),
                                  tls_files(config, dom.paths).cert)
    except OSError as e:
        raise MigrationError(f"cannot migrate securely: {e}") from None
    dom.refuse_if_busy("migrate")
    async with dom.lock:
        dom.require_live("migrate")
        out = Outgoing(dom, host, int(port), live, resource, downtime, ctx)
        out.here = here
        out.copy_storage, out.shared = copy_storage, shared
        res = await out.run()
    if snaps and not out.local:
        # The tree stays in this host's store and its memory state files
        # in this host's snapshot dir: nothing of it travels (docs/snapshots.md;
        # to this same host it did not need to).
        res["warnings"] = [f"the snapshots of {dom.name} ({', '.join(snaps)}) stay with this host (their "
                           "memory state is in its snapshot directory): they are not usable on "
                           f"{host}; migrate the domain back to revert to them"]
        log.warning("%s: %s", dom.name, res["warnings"][0])
    return res


class Outgoing:
    copy_storage = False
    shared: list[str] = []          # --shared-disk: not copied, whatever the probe says
    here: "twins.Loopback | None" = None    # a loopback destination: how to reach this xend too
    local = False                   # the target is this xend (twins.py)

    def __init__(self, dom, host, port, live, resource, downtime, ctx):
        self.dom, self.host, self.port, self.live = dom, host, port, live
        self.resource, self.downtime, self.ctx = resource, downtime, ctx
        self.link: rp.Link | None = None
        self.mirror: storagemigrate.SourceMirror | None = None
        self.switched = False
        self.resume = not dom.paused
        self.t0 = time.monotonic()
        self.where = f"{host}:{port}"
        self.stats: dict = {}
        self.marks: dict = {}           # monotonic times of the switch-over's steps (the log line)
        self.early = False              # the target takes the stream before its QEMU listens

    def _progress(self, **info) -> None:
        self.dom.job.update(progress=info)
        self.dom.services.emit("migrating", self.dom, progress=info, target=self.where)

    async def run(self) -> dict:
        dom = self.dom
        async with durable.change(dom, "migrate"):      # the job is recorded before anything moves
            # The id tells a target on this same host that it is the source's.
            dom.job = jobs.Job("migrate", "connect", target=self.where, resume=self.resume, live=self.live,
                               id=secrets.token_hex(8))
        try:
            try:
                if self.here is not None:
                    self.link = await run_blocking(_connect_loopback, self.host, self.port, self.ctx, self.here)
                else:
                    self.link = await run_blocking(_connect, self.host, self.port, self.ctx)
                await self._prepare()
                faults.point("migrate-source-prepared")
                if self.copy_storage:
                    await self._copy_disks()
                await self._stream()
                self.marks["sent"] = time.monotonic()
                faults.point("migrate-source-streamed")
                reply = rp.check_reply(await run_blocking(self.link.recv, LOAD_TIMEOUT), "loaded")
                self.marks["loaded"] = time.monotonic()
                if self.early:
                    self.stats["target_domid"] = _value(reply, "domid")
                # The commit point: once it is on disk only the target may
                # run the guest (a failure to record it still rolls back).
                dom.job["phase"] = "commit"
                # In a cluster the domain lock moves to the target in this
                # same transaction, comparing the source's revision of it.
                dom.persist(extra=self._handover())
                self.marks["committed"] = time.monotonic()
            except BaseException as e:
                dom.services.count_migration("out", False, self.link.sent if self.link else 0)
                await self._roll_back(e)
                raise self._failure(e) from None
            faults.point("migrate-source-commit")
            try:
                await run_blocking(self.link.send, ["commit"])
                done = rp.check_reply(await run_blocking(self.link.recv, LINK_TIMEOUT), "running")
                self.marks["running"] = time.monotonic()
            except BaseException as e:
                if not (self.local and dom.superseded):
                    dom.services.count_migration("out", False, self.link.sent)
                    if self.local:
                        # One process, one store: the twin did not commit.
                        await self._roll_back(e)
                        raise self._failure(e) from None
                    await self._uncertain(e)
                    raise
                done = []       # the twin runs: only its answer was lost
        finally:
            if self.link is not None:
                await run_blocking(self.link.close)
        dom.services.count_migration("out", True, self.link.sent)
        resumed = _value(done, "resumed")
        stopped = dom.last_runstate_change.get("STOP")
        dom.job["phase"] = "done"
        await dom.destroy_locked()
        total = time.monotonic() - self.t0
        result = {"host": self.host, "port": self.port, "live": self.live, "seconds": round(total, 3),
                  "bytes": self.link.sent, **self.stats}
        if self.local:
            result["same_host"] = True
        if resumed and stopped:
            # Both QEMUs' wall clocks: exact on one machine, NTP-close across hosts.
            result["downtime_ms"] = round((float(resumed) - stopped) * 1000, 1)
        log.info("%s: migrated to %s (%s): %d bytes in %.2f s, downtime %s ms (QEMU's own figure %s ms; "
                 "after the stream: %s)", dom.name, self.where, "live" if self.live else "paused", self.link.sent,
                 total, result.get("downtime_ms", "?"), self.stats.get("qemu_downtime_ms", "?"),
                 steps(self.marks, "sent", ("loaded", "committed", "running")))
        dom.services.emit("migrated", dom, target=self.where, result=result)
        return result

    async def _prepare(self) -> None:
        dom = self.dom
        meta = await dom.save_meta()
        ctx = dom.feature_context()
        # The machine as it booted, which the target must rebuild.
        storage, probes = None, []
        if self.copy_storage:
            storage, probes = await run_blocking(storagemigrate.describe, dom.booted_config(), self.shared)
        req = rp.Receive(config=dom.booted_config().to_sxp(), accel=dom.accel, machine=meta["machine"],
                         qemu=meta["qemu"], live=self.live, host=socket.gethostname(),
                         paused=not self.resume, firmware=firmware.save_meta(ctx),
                         nvram=firmware.nvram_now(ctx), storage=storage, migration_id=dom.job["id"],
                         # Not with disks to copy (their exports must exist
                         # first) nor to this same host (the twin's checks).
                         early=not self.copy_storage and self.here is None)
        dom.job["phase"] = "prepare"
        try:
            answer = await run_blocking(self.link.request, req.to_msg(), None, PREPARE_TIMEOUT)
        finally:
            storagemigrate.remove_probes(probes)
        # A target that takes the stream early answers before its QEMU
        # runs (domid with "loaded"); any other answers when it is ready.
        self.early = answer[:1] == ["early"]
        reply = answer if self.early else rp.check_reply(["ok", *answer], "domid")
        self.stats["target_domid"] = _value(reply, "domid")
        if str(_value(reply, "same-host")) == "1":
            if twins.twin_of(dom) is None:
                raise rp.ProtocolError("the target says it is this host, but this xend holds no arriving copy")
            self.local = True
            dom.job["local"] = True     # recorded with the commit point (recover)
        self.target_cluster = (_value(reply, "cluster-host"), _value(reply, "cluster-lease"))
        if self.copy_storage:
            nbd, hows = storagemigrate.parse_reply(reply)
            self.stats["disks"] = storagemigrate.summary(hows)
            if nbd is not None:
                # QEMU connects to the address this link reached (a name
                # the user gave would be resolved again, maybe elsewhere).
                self.mirror = storagemigrate.SourceMirror(
                    dom, hows, nbd, self.link.sock.getpeername()[0],
                    int(self.resource * (1 << 20)) if self.resource else 0)
                # Recorded first: a restarted xend removes what it left in QEMU.
                dom.job["storage"] = self.mirror.vdevs
                dom.persist()

    async def _copy_disks(self) -> None:
        """Mirror the disks until in sync, then tell the target the memory
        stream follows (it waits for that, however long the copy takes)."""
        if self.mirror is not None:
            self.dom.job["phase"] = "disks"
            t = time.monotonic()
            await self.mirror.start()
            await self.mirror.wait_ready(lambda: self._progress(phase="disks", disk=self.mirror.progress),
                                         self._check_link)
            self.stats["disk_seconds"] = round(time.monotonic() - t, 3)
            self.stats["disk_bytes"] = self.mirror.progress.get("transferred", 0)
        await run_blocking(self.link.send, ["stream"])

    async def _check_link(self) -> None:
        """While the disks copy the main link is quiet: anything from the
        target (an error, its end) fails the migration."""
        if self.link.pending():
            rp.check_reply(await run_blocking(self.link.recv, 5))
            raise rp.ProtocolError("the target spoke out of turn during the disk copy")

    def _handover(self) -> tuple:
        """(compares, ops) moving the domain lock to the target, if both
        hosts are in the cluster (a target outside it: the lock is
        released with this host's copy)."""
        cluster = self.dom.services.cluster
        host, lease = getattr(self, "target_cluster", (None, None))
        if cluster is None or not host:
            return (), ()
        return cluster.handover_ops(self.dom.uuid, str(host), int(str(lease or 0), 16))

    async def _stream(self) -> None:
        dom, mon = self.dom, self.dom.monitor
        stream = mon.migration
        # A guest that dirties memory faster than the link carries it is
        # slowed down (auto-converge) rather than migrated forever.
        # With disks to copy QEMU stops at the switch-over until the
        # mirrors have finished (_watch); otherwise the capability is off.
        await stream.enable_events(auto_converge=self.live, pause_before_switchover=self.mirror is not None)
        limit = self.downtime or DEFAULT_DOWNTIME_MS
        await mon.migrate_set_parameters(
            max_bandwidth=int(self.resource * (1 << 20)) if self.resource else UNLIMITED,
            downtime_limit=limit)
        a, b = socketpair()
        try:
            dom.job["phase"] = "stream"
            if not self.live and not dom.paused:
                await mon.stop()
            else:
                await dom.leave_postmigrate()
            await mon.send_fd(a.fileno(), "pyxen-migrate")
            a.close()
            await stream.start_out("pyxen-migrate")
            self.marks["streaming"] = time.monotonic()
            # Early: at most EARLY_GATE bytes go before the target's QEMU
            # listens (then QEMU waits on its socket, in pre-copy: it cannot
            # finish a pass, so cannot stop the guest, while nothing there
            # can run it).
            pump = asyncio.ensure_future(run_blocking(
                self.link.pump_out, b, EARLY_GATE if self.early else None, self._heard))
            limit = await self._watch(pump, limit)
            await pump
            # The guest is stopped now: the end of the stream goes out at
            # once.  QEMU's MIGRATION 'completed' event normally came before
            # it closed the stream; only without it is QEMU asked (a QMP
            # round trip inside the downtime).  Its figures are read after.
            if stream.status != "completed":
                status = await self._final_status()
                if status != "completed":
                    raise MigrationError(f"QEMU could not send the guest: {await stream.error(status)}")
            await run_blocking(self.link.end)
            if "qemu_total_ms" not in self.stats:
                await self._final_status()
            await self._report(limit)       # the last progress report, out of the downtime
        finally:
            a.close()
            b.close()

    def _heard(self, held: bool) -> None:
        """(The pump's thread.)  The target's QEMU takes the stream now;
        *held*: the source waited for it at the gate."""
        t = time.monotonic()
        self.marks["listening"] = t
        log.debug("%s: the target's QEMU takes the stream %.0f ms after it began%s", self.dom.name,
                  (t - self.marks["streaming"]) * 1000, " (the stream waited for it)" if held else "")

    async def _watch(self, pump, limit: int) -> int:
        """Report progress until the pump ends; ramp the allowed downtime
        up when pre-copy does not converge (unless the user fixed it).
        Returns the downtime limit in force at the end."""
        dom = self.dom
        passes_at_limit = 0
        while not pump.done():
            if self.mirror is None:
                await asyncio.wait([pump], timeout=0.5)
            else:
                changed = asyncio.ensure_future(dom.monitor.migration.changed.wait())
                await asyncio.wait([pump, changed], timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                dom.monitor.migration.changed.clear()
                if dom.monitor.migration.status == "pre-switchover" and not self.switched:
                    # The guest is stopped: the disks' last sync, then the
                    # end of the memory stream (libvirt's order).
                    self.switched = True
                    await self.mirror.finish()
                    await dom.monitor.migrate_continue()
                    continue
            if pump.done():
                break       # the switch-over: no progress query inside the downtime
            passes = await self._report(limit)
            if self.live and not self.downtime and limit < MAX_RAMPED_DOWNTIME_MS \
                    and passes - passes_at_limit >= RAMP_EVERY_PASSES:
                if passes_at_limit:
                    limit = min(limit * 2, MAX_RAMPED_DOWNTIME_MS)
                    await quietly(dom.monitor.migrate_set_parameters(downtime_limit=limit))
                    log.info("%s: pre-copy not converging after %d passes; allowing %d ms of downtime",
                             dom.name, passes, limit)
                passes_at_limit = passes
        return limit

    async def _report(self, limit: int) -> int:
        """Publish QEMU's progress; the number of passes so far."""
        info = await quietly(self.dom.monitor.query_migrate()) or {}
        ram = info.get("ram") or {}
        passes = ram.get("dirty-sync-count", 0)
        self._progress(status=info.get("status"), transferred=ram.get("transferred", 0),
                       remaining=ram.get("remaining", 0), total=ram.get("total", 0),
                       dirty_rate=ram.get("dirty-pages-rate", 0) * ram.get("page-size", 4096),
                       passes=passes, expected_downtime_ms=info.get("expected-downtime"),
                       downtime_limit_ms=limit, **({"disk": self.mirror.progress} if self.mirror else {}))
        return passes

    async def _final_status(self) -> str | None:
        info = await self.dom.monitor.migration.final_info()
        st = info.get("status")
        if st == "completed":
            self.stats["qemu_downtime_ms"] = info.get("downtime")
            self.stats["qemu_total_ms"] = info.get("total-time")
            self.stats["passes"] = (info.get("ram") or {}).get("dirty-sync-count")
        return st

    async def _roll_back(self, e: BaseException) -> None:
        """Before the commit point: the guest stays (or runs again) here."""
        dom = self.dom
        log.error("%s: migration to %s failed: %s", dom.name, self.where, describe(e))
        if self.link is not None:
            # Best effort: tell the target to drop what it prepared (it
            # also does so when the connection simply ends).
            try:
                self.link.sock.settimeout(2)
                await run_blocking(self.link.end, rp.ABORT)
            except Exception:
                pass
        if self.mirror is not None and dom.monitor is not None and dom.pid:
            await self.mirror.abort()
        if self.local:
            # The twin may hold the disks' locks (QEMU takes them when the
            # stream is loaded): the source resumes once it is gone.
            await twins.wait_gone(dom)
        if dom.monitor is not None and dom.pid and not await dom.cancel_outgoing(self.resume):
            log.error("%s: could not resume the guest after the failed migration", dom.name)
        if self.mirror is not None and dom.monitor is not None:
            await quietly(dom.monitor.migrate_set_capabilities(pause_before_switchover=False))
        dom.job = None
        dom.persist_quietly()

    def _failure(self, e: BaseException) -> BaseException:
        if isinstance(e, asyncio.CancelledError):
            return e
        dom = self.dom
        still = f"; {dom.name} is still {'running' if self.resume else 'paused'} here"
        if isinstance(e, rp.PeerError) and e.kind == "refused":
            # The target would not talk to us at all (its hosts-allow).
            return MigrationError(f"migrating {dom.name} to {self.where} failed: refused by {self.host}: "
                                  f"{e}{still}")
        if isinstance(e, rp.PeerError):
            return MigrationError(f"{self.where} refused domain {dom.name}: {e}{still}")
        return MigrationError(f"migrating {dom.name} to {self.where} failed: {describe(e)}{still}")

    async def _uncertain(self, e: BaseException) -> None:
        dom = self.dom
        dom.paused = True
        dom.job = None
        dom.persist_quietly()
        msg = (f"the target was told to run {dom.name} but did not confirm ({describe(e)}); "
               f"{dom.name} is kept paused here: check {self.host} and unpause it here only if it "
               "does not run there")
        log.error("%s: %s", dom.name, msg)
        raise MigrationError(msg) from None


def describe(e: BaseException) -> str:
    if isinstance(e, (rp.ProtocolError, rp.PeerError, XendError)):
        return str(e)
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return f"{type(e).__name__}: {e}"


def steps(marks: dict, first: str, order: tuple) -> str:
    """'loaded +3.1 ms, committed +5.0 ms, ...' from monotonic *marks*,
    each step against the one before (where the switch-over's time goes)."""
    out, prev = [], marks.get(first)
    for k in order:
        if k in marks and prev is not None:
            out.append(f"{k} +{(marks[k] - prev) * 1000:.1f} ms")
            prev = marks[k]
    return ", ".join(out) or "?"


def _value(values: list, key: str):
    for v in values:
        if isinstance(v, list) and v and v[0] == key:
            return v[1] if len(v) > 1 else None
    return None


@jobs.recovers("migrate")
async def recover(dom, job: dict) -> None:
    """After an xend restart on the source: a migration that had not
    reached its commit point is rolled back (the guest runs here again);
    one past it keeps the guest paused, as nobody knows whether the
    target runs it."""
    alive = dom.monitor is not None and dom.pid
    # To this same host the commit is never uncertain: this record is
    # still the source's, so the twin never committed (twins.py), and it
    # was dropped before this recovery ran.
    if job.get("phase") in ("commit", "done") and not job.get("local"):
        log.error("%s: xend stopped after telling %s to run the domain; kept paused here — "
                  "check the target before unpausing it", dom.name, job.get("target"))
        if alive:
            await quietly(dom.monitor.migrate_cancel())
        dom.paused = True
    else:
        log.info("%s: migration to %s interrupted by xend's exit; rolling back", dom.name, job.get("target"))
        if alive and job.get("storage"):
            await storagemigrate.clean_source(dom, [str(v) for v in job["storage"]])
        if alive:
            await dom.cancel_outgoing(bool(job.get("resume")))
            if job.get("storage"):
                await quietly(dom.monitor.migrate_set_capabilities(pause_before_switchover=False))
    dom.job = None
    dom.persist()
