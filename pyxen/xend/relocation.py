"""Live migration, the target's end: the relocation server (manual §8.2,
§9.3) accepting domains from other hosts' xends, and the receiving side of
one migration (``Incoming``).  The protocol and who runs the domain at
every step are described in migration.py, the source's end.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time

from .. import faults
from ..config import sxp
from ..config.domain import DomainConfig
from ..config.errors import ConfigError
from ..hypervisor.qemu import qemulog
from ..pki import PkiError, is_host_cert, peer_name
from ..store import StoreError
from . import features, firmware, nbdtls, preauth, remotecreate, storagemigrate, twins
from . import relocproto as rp
from .errors import InvalidRequest, XendError
from .lifecycle import State
from .migration import LOAD_TIMEOUT, describe, steps
from .relolink import LINK_TIMEOUT, MigrationError, run_blocking, socketpair, tls_files, tune

# Early migrations: the stream's first frames a target holds in memory while
# its QEMU starts (then TCP holds the source back).  A source sends at most
# its gate (migration.EARLY_GATE, 16 MiB) before the target listens: this
# only bounds what a peer that ignores the gate can make this xend hold.
EARLY_HOLD = 64 << 20

log = logging.getLogger("pyxen.domain.migrate")


class RelocationServer:
    """Accepts migrations on xend-relocation-address:xend-relocation-port."""

    def __init__(self, domains):
        self.domains = domains
        cfg = domains.config
        self.port = cfg["xend-relocation-port"]
        self.address = cfg["xend-relocation-address"]
        try:
            self.allow = [re.compile(p) for p in cfg["xend-relocation-hosts-allow"].split()]
        except re.error as e:
            raise XendError(f"xend-relocation-hosts-allow: bad regular expression: {e}") from None
        self.ctx = None
        if cfg["xend-relocation-tls"]:
            try:
                self.ctx = tls_files(domains.config, domains.paths).server_context()
            except PkiError as e:
                raise XendError(f"relocation server: {e}") from None
        self.sock: socket.socket | None = None
        self._task: asyncio.Task | None = None
        self._conns: set[asyncio.Task] = set()
        # Peers are strangers until their first message: preauth's budget.
        self.budget = preauth.from_config(cfg, "relocation", log)

    async def start(self) -> None:
        host = self.address or None
        try:
            if host is None and socket.has_dualstack_ipv6():
                self.sock = socket.create_server(("", self.port), family=socket.AF_INET6, dualstack_ipv6=True)
            else:
                self.sock = socket.create_server((host or "", self.port))
        except OSError as e:
            raise XendError(f"relocation server: cannot listen on {host or '*'}:{self.port}: "
                            f"{e.strerror}") from None
        self.sock.setblocking(False)
        self._task = asyncio.create_task(self._accept())
        # Plaintext lets anyone who reaches the port send a domain: a WARNING.
        (log.info if self.ctx else log.warning)(
                 "relocation server on %s:%d (%s)%s", host or "*", self.port,
                 "TLS, certificates required" if self.ctx else "PLAINTEXT: no authentication",
                 f", hosts-allow {' '.join(p.pattern for p in self.allow)}" if self.allow else "")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for t in list(self._conns):
            t.cancel()
        if self.sock:
            self.sock.close()
        self.budget.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                return
            except OSError as e:
                log.error("relocation server: accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            ticket = self.budget.admit(str(addr[0]).removeprefix("::ffff:"))
            if ticket is None:
                conn.close()
                continue
            t = asyncio.create_task(self._handle(conn, addr, ticket))
            self._conns.add(t)
            t.add_done_callback(self._conns.discard)

    async def allowed(self, addr: str) -> bool:
        if not self.allow:
            return True
        addr = addr.removeprefix("::ffff:")
        names = [addr]
        try:
            names.append(await asyncio.wait_for(self.budget.run(socket.getfqdn, addr), 3))
        except Exception:
            pass
        return any(p.match(n) for p in self.allow for n in names)

    async def _handle(self, conn: socket.socket, addr, ticket: preauth.Ticket) -> None:
        peer = str(addr[0]).removeprefix("::ffff:")
        link = None
        try:
            allowed = await self.allowed(peer)
            conn.setblocking(True)
            tune(conn)
            try:
                link = await self.budget.run(self._wrap, conn)
            except (ssl.SSLError, OSError) as e:
                self.budget.refuse(peer, f"{'' if allowed else 'not in xend-relocation-hosts-allow; '}"
                                   f"TLS handshake failed: {e}", "tls")
                conn.close()
                return
            if not allowed:
                # The peer hears why before the close (16 item 11): over TLS
                # only a host of the pool gets that far; the handshake and
                # this reply are pre-authentication work within the budget.
                self.budget.refuse(peer, "not in xend-relocation-hosts-allow")
                await self.budget.run(tell_and_close, link, rp.err("refused", "not in xend-relocation-hosts-allow"),
                                      self.budget.deadline)
                return
            if self.ctx is not None and not is_host_cert(link.sock.getpeercert(binary_form=True)):
                # An API user's client certificate comes from the same CA,
                # but only a host may send domains here.
                self.budget.refuse(peer, f"{peer_name(link.sock)}: not a host certificate")
                return
            first = await self._first_message(link, peer)
            if first is None:
                return
            ticket.release()        # a real peer now: its migration may take its time
            if first[0] == "check":
                # Placement on another member asks which disks and kernel this host has.
                await remotecreate.serve_check(link, first, peer)
                return
            if first[0] == "create":
                # xm create on another member, placed here (remotecreate).
                log.info("relocation: create request from %s (%s)", peer,
                         peer_name(link.sock) if self.ctx else "unauthenticated")
                await remotecreate.serve(self.domains, link, first, peer)
                return
            who = peer_name(link.sock) if self.ctx else "unauthenticated"
            log.info("relocation: connection from %s (%s)", peer, who)
            await Incoming(self.domains, link, peer, first).run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("relocation: connection from %s failed", peer)
        finally:
            ticket.release()
            if link is not None:
                await run_blocking(link.close)
            else:
                conn.close()

    async def _first_message(self, link: rp.Link, peer: str):
        """The peer's first control message, whole, within the budget's
        deadline (a peer dribbling a byte a second is cut off too); None
        if it did not come (the refusal is logged, rate-limited)."""
        job = asyncio.ensure_future(self.budget.run(link.recv, self.budget.deadline))
        try:
            return await asyncio.wait_for(asyncio.shield(job), self.budget.deadline)
        except asyncio.TimeoutError:
            why = f"no complete first message within {self.budget.deadline:.0f} s"
        except rp.ProtocolError as e:
            why = f"before its first message: {e}"
        try:
            link.sock.shutdown(socket.SHUT_RDWR)    # wakes the worker still reading
        except OSError:
            pass
        try:
            await job
        except Exception:
            pass
        self.budget.refuse(peer, why)
        return None

    def _wrap(self, conn: socket.socket) -> rp.Link:
        # The handshake is pre-authentication: the budget's short deadline.
        conn.settimeout(self.budget.deadline)
        if self.ctx is not None:
            conn = self.ctx.wrap_socket(conn, server_side=True)
        return rp.Link(conn, LINK_TIMEOUT)


def tell_and_close(link: rp.Link, msg: list, deadline: float) -> None:
    """Send a refusal, then read until the peer closes (at most *deadline*
    seconds): closing with the peer's request unread would reset the
    connection and could lose the refusal on its way."""
    try:
        link.send(msg)
        link.sock.shutdown(socket.SHUT_WR)
        link.sock.settimeout(deadline)
        end = time.monotonic() + deadline
        while time.monotonic() < end and link.sock.recv(65536):
            pass
    except (OSError, ssl.SSLError, rp.ProtocolError):
        pass


class Incoming:
    def __init__(self, domains, link: rp.Link, peer: str, first: list | None = None):
        self.domains, self.link, self.peer = domains, link, peer
        self.first = first          # the (receive ...) already read by the server
        self.dom = None
        # --copy-storage: the disks created here, their NBD exports.
        self.disks: list[dict] | None = None
        self.journal: storagemigrate.Journal | None = None
        self.nbd: dict | None = None        # the NBD server's port and key (nbdtls), while it runs
        self.committed = False
        self.marks: dict = {}           # monotonic times of the switch-over's steps (the log line)
        # Early (Receive.early): where the first frames wait, and the thread reading them.
        self.spool: rp.Spool | None = None
        self.pump: asyncio.Future | None = None

    async def _send(self, msg: list) -> None:
        await run_blocking(self.link.send, msg)

    async def run(self) -> None:
        try:
            first = self.first if self.first is not None else await run_blocking(self.link.recv, LINK_TIMEOUT)
            req = rp.parse_receive(first)
            try:
                cfg = DomainConfig.from_sxp(req.config)
            except (ConfigError, sxp.SxpError) as e:
                raise InvalidRequest(f"the domain config is invalid: {e}") from None
        except (rp.ProtocolError, InvalidRequest) as e:
            log.warning("relocation: bad request from %s: %s", self.peer, e)
            await self._try_send(rp.err("protocol", str(e)))
            return
        log.info("relocation: receiving domain %s from %s (%s, %s)", cfg.name, req.host,
                 "live" if req.live else "paused", self.peer)
        try:
            if self.domains.same_host_source(cfg.uuid, req.migration_id) is not None:
                log.info("relocation: %s comes from this same host (its domid %d)", cfg.name,
                         self.domains.by_uuid[cfg.uuid].domid)
                twins.refuse_unsupported(cfg, req.storage is not None)
            firmware.check_restore(cfg, req.firmware, f"the domain from {req.host}")
            if req.nvram:
                # The target's QEMU starts from the source's UEFI variables.
                self.domains.store.put(firmware.nvram_key(cfg.uuid), req.nvram)
            if req.storage is not None:
                await self._create_disks(cfg, req.storage)
            if self._early(req, cfg):
                # The source streams while this QEMU starts: the first frames
                # are held (relocproto.Spool) until it listens.  What can be
                # refused is refused first, before any byte moves.
                await self.domains.check_incoming(cfg, req.accel)
                await self._send(rp.ok("early", *self._cluster_extra()))
                self.spool = rp.Spool(EARLY_HOLD)
                self.pump = asyncio.ensure_future(run_blocking(self.link.pump_in, self.spool))
            faults.point("migrate-target-preparing")
            self.dom = await self.domains.prepare_incoming(cfg, req.accel, req.machine, req.migration_id)
            if self.disks is not None:
                await self._export()
        except (XendError, StoreError, OSError) as e:
            log.warning("relocation: refused domain %s from %s: %s", cfg.name, self.peer, e)
            if self.dom is not None and self.dom.state == State.INCOMING:
                await self.dom.destroy(force=True)
            await run_blocking(self._drop_disks)
            if await self._stop_pump(getattr(e, "code", "refused"), str(e)):
                await self._try_send(rp.err(getattr(e, "code", "refused"), str(e)))
            return
        try:
            await self._receive(req)
            self.domains.count_migration("in", True, self.link.sent)
        except BaseException as e:
            self.domains.count_migration("in", False, self.link.sent)
            log.error("relocation: domain %s from %s not received: %s", cfg.name, self.peer, describe(e))
            if self.dom is not None and not self.committed:
                # (Also one whose commit could not be recorded: it never ran.)
                await self.dom.destroy(force=True)
            await run_blocking(self._drop_disks)
            told = not await self._stop_pump("receive", describe(e))
            if not told and not isinstance(e, (rp.ProtocolError, asyncio.CancelledError)):
                await self._try_send(rp.err("receive", describe(e)))
            if isinstance(e, asyncio.CancelledError):
                raise

    def _early(self, req: rp.Receive, cfg: DomainConfig) -> bool:
        """Whether this migration takes the stream before its QEMU runs:
        asked by the source, and neither disks to copy nor a twin here."""
        return (req.early and req.storage is None
                and self.domains.same_host_source(cfg.uuid, req.migration_id) is None)

    def _cluster_extra(self) -> list:
        cluster = self.domains.cluster
        if cluster is None:
            return []
        return [["cluster-host", cluster.name], ["cluster-lease", f"{cluster.membership.lease:x}"]]

    async def _stop_pump(self, kind: str, message: str) -> bool:
        """Early, when the target gives up: make the reading thread tell the
        source (err ...) and read to the stream's end.  False if that
        thread told it; True if the link is free for the caller to."""
        if self.pump is None:
            return True
        self.spool.refuse(kind, message)
        try:
            _, problem = await self.pump
        except Exception:
            return False        # the link is gone: nobody to tell
        finally:
            self.pump = None
        return problem is None

    async def _create_disks(self, cfg: DomainConfig, storage: list) -> None:
        """The source's local disks, created empty here (or found shared);
        refused before anything is created when they cannot be."""
        disks = storagemigrate.parse(storage)
        await run_blocking(storagemigrate.plan, disks)
        self.journal = storagemigrate.Journal(self.domains.paths.lib, cfg.uuid)
        self.disks = disks
        await run_blocking(self.journal.create, disks)
        log.info("relocation: %s from %s: %s", cfg.name, self.peer,
                 storagemigrate.summary({d["vdev"]: d["how"] for d in disks}))

    async def _export(self) -> None:
        # The NBD port listens on the address the source reached us on.
        addr = self.link.sock.getsockname()[0]
        try:
            ports = nbdtls.parse_ports(self.domains.config["xend-relocation-nbd-ports"])
            self.nbd = await storagemigrate.export(self.dom, self.disks, addr, ports)
        except Exception as e:
            raise MigrationError(f"cannot export the new disks over NBD: {e}") from None

    def _drop_disks(self) -> None:
        """Unless the domain arrived, the files created for it go (its
        QEMU, and so the NBD server, is gone by then)."""
        if self.journal is not None:
            (self.journal.forget if self.committed else self.journal.remove)()

    async def _try_send(self, msg: list) -> None:
        try:
            self.link.sock.settimeout(5)
            await self._send(msg)
        except Exception:
            pass

    async def _receive(self, req: rp.Receive) -> None:
        dom = self.dom
        mon = dom.monitor
        a, b = socketpair()
        try:
            await mon.migration.enable_events()
            await mon.send_fd(a.fileno(), "pyxen-migrate")
            a.close()
            await mon.migration.start_in("pyxen-migrate")
            if self.pump is not None:
                # Early: the held frames to QEMU, then the rest as it comes.
                faults.point("migrate-target-receiving")
                await run_blocking(self.spool.attach, b)
                pump, self.pump = self.pump, None
                kind, problem = await pump
            else:
                kind, problem = await self._stream_in(b)
        finally:
            a.close()
            b.close()       # QEMU sees the end of its stream
        await self._loaded(req, kind, problem)

    async def _stream_in(self, b) -> tuple[bytes, str | None]:
        """The classic order: (ok (domid N) ...) once QEMU listens, then
        the stream (after the disk copy, with --copy-storage)."""
        dom = self.dom
        extra = [storagemigrate.reply(self.disks, self.nbd)] if self.disks is not None else []
        if dom.twin:
            extra.append(["same-host", 1])
        extra += self._cluster_extra()
        await self._send(rp.ok(["domid", dom.domid], *extra))
        if self.disks is not None:
            # The source mirrors the disks first; the link is quiet
            # until it says the memory follows (a dead source is seen
            # by TCP keepalive, a killed xend by the connection's end).
            msg = await run_blocking(self.link.recv, storagemigrate.READY_TIMEOUT)
            if msg[0] != "stream":
                raise rp.ProtocolError(f"expected (stream) after the disk copy, got ({msg[0]} ...)")
        faults.point("migrate-target-receiving")
        return await run_blocking(self.link.pump_in, b)

    async def _loaded(self, req: rp.Receive, kind: bytes, problem: str | None) -> None:
        """After the stream's last frame: QEMU's load, then the commit."""
        dom, mon = self.dom, self.dom.monitor
        if kind == rp.ABORT:
            raise rp.ProtocolError("the source gave up the migration")
        if problem:
            raise rp.ProtocolError(problem)       # the source was told already
        status = await mon.migration.wait_done(LOAD_TIMEOUT, tick=0.5, poll=True, check=lambda: bool(dom.pid))
        if status != "completed":
            raise MigrationError(f"QEMU could not load the guest: {await mon.migration.error(status)}"
                                 + qemulog.reason(dom.runtime().qemu_log, dom.qemu_log_start))
        self.marks["stream"] = time.monotonic()
        await self._send(rp.ok("loaded", ["domid", dom.domid]))
        self.marks["loaded"] = time.monotonic()
        faults.point("migrate-target-loaded")
        msg = await run_blocking(self.link.recv, LINK_TIMEOUT)
        self.marks["commit"] = time.monotonic()
        if msg[0] != "commit":
            raise rp.ProtocolError(f"the source did not commit ({msg[0]})")
        await self._commit(req.paused)

    async def _commit(self, paused: bool) -> None:
        dom = self.dom
        cluster = self.domains.cluster
        if cluster is not None and cluster.lock_enabled and not cluster.lock.holds(dom.uuid):
            # The source's commit moves the lock here; without it the guest
            # must not run here (the source keeps it, paused).
            raise MigrationError(f"domain {dom.name}: the source committed but this host does not hold "
                                 f"its lock (owner {cluster.lock.owner(dom.uuid) or 'nobody'})")
        if cluster is not None:
            cluster.arrived(dom.uuid)
        source = None
        async with dom.lock:
            # Durable before the guest runs: a restart now adopts it as a
            # running domain instead of rolling it back.
            dom.state = State.RUNNING
            dom.paused = paused
            dom.start_time = time.time()
            if dom.twin:
                # From this same host: the twin takes the source's record
                # and registry slot in one step (twins.py).
                source = twins.commit(self.domains, dom)
            else:
                dom.persist()
            self.marks["persisted"] = time.monotonic()
            self.committed = True
            faults.point("migrate-target-committed")
            if self.disks is not None:
                # No NBD client may write once the guest runs here.
                await storagemigrate.unexport(dom)
            await features.after_start(dom.feature_context())
            if not paused:
                asked = time.time()
                await dom.monitor.cont()
                answered = time.time()
                self.marks["cont"] = time.monotonic()
            await dom.refresh_vcpus()
            dom.apply_placement(initial=True)
            if source is not None:
                twins.copy_pinning(source, dom)
        if self.disks is not None:
            await run_blocking(self._drop_disks)     # after the resume: out of the downtime
        resumed = None
        if not paused:
            # The guest runs from QEMU's RESUME event (its timestamp, like
            # the source's STOP), which QEMU sends before answering 'cont';
            # under TCG the answer itself lagged the event by 13-28 ms
            # here (bench/migrate.py), so the clock after 'cont' answered
            # overstates the downtime.  It is the fallback if the event
            # was not seen.
            ev = dom.last_runstate_change.get("RESUME")
            resumed = ev if ev is not None and asked <= ev <= answered else answered
        dom.announced = True
        dom.services.emit("created", dom, migrated_from=self.peer,
                          **({"replaces_domid": source.domid} if source is not None else {}))
        log.info("%s: arrived from %s and running (domid %d%s; after the stream: %s)", dom.name, self.peer,
                 dom.domid, f", replacing domid {source.domid} of this host" if source is not None else "",
                 steps(self.marks, "stream", ("loaded", "commit", "persisted", "cont")))
        await self._send(rp.ok("running", ["resumed", f"{resumed:.6f}"] if not paused else ["paused", 1]))
