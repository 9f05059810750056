"""Live migration: ``xm migrate`` on the source, the relocation server on
the target (manual §8.2, §9.3).

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
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
import ssl
import time

from .. import faults, storekeys
from ..config import sxp
from ..config.domain import DomainConfig
from ..config.errors import ConfigError
from ..hypervisor.qemu import qemulog
from ..pki import PkiError, TlsFiles, is_host_cert, peer_name
from ..store import StoreError
from . import preauth
from . import relocproto as rp
from . import hvm as hvmx
from .errors import Conflict, InvalidRequest, XendError

log = logging.getLogger("pyxen.domain.migrate")

CONNECT_TIMEOUT = 30.0      # Xen's relocation connect timeout
LINK_TIMEOUT = 60.0         # the longest silence of a live peer
PREPARE_TIMEOUT = 120.0     # the target starts QEMU, builds vifs
LOAD_TIMEOUT = 120.0        # the target QEMU finishes loading after E
DEFAULT_DOWNTIME_MS = 50    # start of the downtime ramp (QEMU's default is 300)
MAX_RAMPED_DOWNTIME_MS = 2000
RAMP_EVERY_PASSES = 4       # double the allowed downtime after this many passes
UNLIMITED = 1 << 40         # bytes/s: QEMU's 128 MiB/s default would cap a LAN
# The socketpairs between xend and QEMU: whatever sits in them when the
# guest stops must still cross the link and be loaded before it resumes.
# 4 MiB buffers made the idle downtime ~60 ms (median of 8-10
# migrations, bench/migrate.py's harness), 1 MiB ~30-47 ms with the same
# stream throughput; 256 KiB halved the throughput.
SOCKBUF = 1 << 20


class MigrationError(Conflict):
    """A migration that did not happen; the message says where the domain
    is.  (409: the request was fine, the hosts' state did not allow it.)"""
    code = "migration_failed"


async def _run(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


def _socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, SOCKBUF)
            except OSError:
                pass
    return a, b


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt, val in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)


def tls_files(reg) -> TlsFiles:
    c = reg.config
    return TlsFiles.for_host(reg.paths.etc, c["xend-relocation-server-ssl-cert-file"],
                             c["xend-relocation-server-ssl-key-file"], c["xend-relocation-ca-file"])


# ===================================================================== source
def _connect(host: str, port: int, ctx: ssl.SSLContext | None) -> rp.Link:
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except socket.timeout:
        raise MigrationError(f"cannot connect to {host}:{port}: no answer in {CONNECT_TIMEOUT:.0f} s") from None
    except OSError as e:
        raise MigrationError(f"cannot connect to {host}:{port}: {e.strerror or e} "
                             "(is xend-relocation-server on there?)") from None
    _tune(sock)
    if ctx is not None:
        try:
            sock = ctx.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as e:
            sock.close()
            raise MigrationError(f"{host}:{port} is not a trusted pyxen host: {e.verify_message}") from None
        except (ssl.SSLError, OSError) as e:
            sock.close()
            raise MigrationError(f"TLS with {host}:{port} failed: {_tls_reason(e)}") from None
    return rp.Link(sock, LINK_TIMEOUT)


def _tls_reason(e: Exception) -> str:
    text = getattr(e, "reason", None) or str(e)
    if "WRONG_VERSION_NUMBER" in str(text) or "record layer failure" in str(text):
        return "the peer does not speak TLS (is its xend-relocation-tls off?)"
    if "alert" in str(text).lower() or "UNKNOWN_CA" in str(text):
        return f"the peer refused our certificate ({text})"
    if isinstance(e, ConnectionResetError) or "EOF" in str(text):
        return "the peer closed the connection during the handshake (it refused us: see its xend.log)"
    return str(text)


async def migrate(dom, host: str, port: int | None = None, live: bool = False,
                  resource: float | None = None, downtime: int | None = None) -> dict:
    """Move running domain *dom* to the xend at *host*.  Returns what
    happened (times, bytes, downtime); raises MigrationError saying where
    the domain is when anything fails."""
    reg = dom.reg
    port = port or reg.config["xend-relocation-port"]
    if not host or not isinstance(host, str) or len(host) > 255 or any(c.isspace() for c in host):
        raise InvalidRequest(f"invalid destination host {host!r}")
    if not 0 < int(port) < 65536:
        raise InvalidRequest(f"invalid relocation port {port}")
    if resource is not None and resource <= 0:
        raise InvalidRequest(f"the bandwidth limit must be positive, got {resource}")
    if downtime is not None and not 1 <= downtime <= 60000:
        raise InvalidRequest(f"the downtime limit must be 1-60000 ms, got {downtime}")
    ctx = None
    if reg.config["xend-relocation-tls"]:
        try:
            ctx = tls_files(reg).client_context()
        except PkiError as e:
            raise MigrationError(f"cannot migrate securely: {e}") from None
    dom._refuse_if_busy()
    async with dom.lock:
        dom._require_live()
        return await Outgoing(dom, host, int(port), live, resource, downtime, ctx).run()


class Outgoing:
    def __init__(self, dom, host, port, live, resource, downtime, ctx):
        self.dom, self.host, self.port, self.live = dom, host, port, live
        self.resource, self.downtime, self.ctx = resource, downtime, ctx
        self.link: rp.Link | None = None
        self.resume = not dom.paused
        self.t0 = time.monotonic()
        self.where = f"{host}:{port}"
        self.stats: dict = {}

    def _progress(self, **info) -> None:
        self.dom.job.update(progress=info)
        self.dom.reg.emit("migrating", self.dom, progress=info, target=self.where)

    async def run(self) -> dict:
        dom = self.dom
        dom.job = {"op": "migrate", "phase": "connect", "target": self.where, "resume": self.resume,
                   "live": self.live}
        dom.persist()
        try:
            try:
                self.link = await _run(_connect, self.host, self.port, self.ctx)
                await self._prepare()
                faults.point("migrate-source-prepared")
                await self._stream()
                faults.point("migrate-source-streamed")
                reply = await _run(self.link.recv, LOAD_TIMEOUT)
                rp.check_reply(reply, "loaded")
                # The commit point: once it is on disk only the target may
                # run the guest (a failure to record it still rolls back).
                dom.job["phase"] = "commit"
                dom.persist()
            except BaseException as e:
                dom.reg.count_migration("out", False, self.link.sent if self.link else 0)
                await self._roll_back(e)
                raise self._failure(e) from None
            faults.point("migrate-source-commit")
            try:
                await _run(self.link.send, ["commit"])
                done = rp.check_reply(await _run(self.link.recv, LINK_TIMEOUT), "running")
            except BaseException as e:
                dom.reg.count_migration("out", False, self.link.sent)
                await self._uncertain(e)
                raise
        finally:
            if self.link is not None:
                await _run(self.link.close)
        dom.reg.count_migration("out", True, self.link.sent)
        resumed = _value(done, "resumed")
        stopped = dom.last_runstate_change.get("STOP")
        dom.job["phase"] = "done"
        await dom._destroy_locked()
        total = time.monotonic() - self.t0
        result = {"host": self.host, "port": self.port, "live": self.live, "seconds": round(total, 3),
                  "bytes": self.link.sent, **self.stats}
        if resumed and stopped:
            # Both QEMUs' wall clocks: exact on one machine, NTP-close across hosts.
            result["downtime_ms"] = round((float(resumed) - stopped) * 1000, 1)
        log.info("%s: migrated to %s (%s): %d bytes in %.2f s, downtime %s ms (QEMU's own figure %s ms)",
                 dom.name, self.where, "live" if self.live else "paused", self.link.sent, total,
                 result.get("downtime_ms", "?"), self.stats.get("qemu_downtime_ms", "?"))
        dom.reg.emit("migrated", dom, target=self.where, result=result)
        return result

    async def _prepare(self) -> None:
        dom = self.dom
        meta = await dom._save_meta()
        req = rp.Receive(config=dom.cfg.to_sxp(), accel=dom.accel, machine=meta["machine"],
                         qemu=meta["qemu"], live=self.live, host=socket.gethostname(),
                         paused=not self.resume, firmware=hvmx.save_meta(dom), nvram=hvmx.nvram_now(dom))
        dom.job["phase"] = "prepare"
        reply = await _run(self.link.request, req.to_msg(), "domid", PREPARE_TIMEOUT)
        self.stats["target_domid"] = _value(reply, "domid")

    async def _stream(self) -> None:
        dom, q = self.dom, self.dom.qmp
        caps = [{"capability": "events", "state": True},
                # A guest that dirties memory faster than the link carries it
                # is slowed down rather than migrated forever.
                {"capability": "auto-converge", "state": self.live}]
        await q.execute("migrate-set-capabilities", {"capabilities": caps})
        limit = self.downtime or DEFAULT_DOWNTIME_MS
        await q.execute("migrate-set-parameters", {
            "max-bandwidth": int(self.resource * (1 << 20)) if self.resource else UNLIMITED,
            "downtime-limit": limit})
        a, b = _socketpair()
        try:
            dom.job["phase"] = "stream"
            if not self.live and not dom.paused:
                await q.execute("stop")
            else:
                await dom._leave_postmigrate()
            await q.send_fd(a.fileno(), "pyxen-migrate")
            a.close()
            dom._mig_status = None
            dom._mig_changed.clear()
            await q.execute("migrate", {"uri": "fd:pyxen-migrate"})
            pump = asyncio.ensure_future(_run(self.link.pump_out, b))
            limit = await self._watch(pump, limit)
            await pump
            # The guest is stopped now: the end of the stream goes out at
            # once.  QEMU's MIGRATION 'completed' event normally came before
            # it closed the stream; only without it is QEMU asked (a QMP
            # round trip inside the downtime).  Its figures are read after.
            if dom._mig_status != "completed":
                status = await self._final_status()
                if status != "completed":
                    info = await dom._quietly("query-migrate") or {}
                    raise MigrationError(f"QEMU could not send the guest: "
                                         f"{info.get('error-desc') or 'migration ' + str(status)}")
            await _run(self.link.end)
            if "qemu_total_ms" not in self.stats:
                await self._final_status()
            await self._report(limit)       # the last progress report, out of the downtime
        finally:
            a.close()
            b.close()

    async def _watch(self, pump, limit: int) -> int:
        """Report progress until the pump ends; ramp the allowed downtime
        up when pre-copy does not converge (unless the user fixed it).
        Returns the downtime limit in force at the end."""
        dom = self.dom
        passes_at_limit = 0
        while not pump.done():
            await asyncio.wait([pump], timeout=0.5)
            if pump.done():
                break       # the switch-over: no progress query inside the downtime
            passes = await self._report(limit)
            if self.live and not self.downtime and limit < MAX_RAMPED_DOWNTIME_MS \
                    and passes - passes_at_limit >= RAMP_EVERY_PASSES:
                if passes_at_limit:
                    limit = min(limit * 2, MAX_RAMPED_DOWNTIME_MS)
                    await dom._quietly("migrate-set-parameters", {"downtime-limit": limit})
                    log.info("%s: pre-copy not converging after %d passes; allowing %d ms of downtime",
                             dom.name, passes, limit)
                passes_at_limit = passes
        return limit

    async def _report(self, limit: int) -> int:
        """Publish QEMU's progress; the number of passes so far."""
        info = await self.dom._quietly("query-migrate") or {}
        ram = info.get("ram") or {}
        passes = ram.get("dirty-sync-count", 0)
        self._progress(status=info.get("status"), transferred=ram.get("transferred", 0),
                       remaining=ram.get("remaining", 0), total=ram.get("total", 0),
                       dirty_rate=ram.get("dirty-pages-rate", 0) * ram.get("page-size", 4096),
                       passes=passes, expected_downtime_ms=info.get("expected-downtime"),
                       downtime_limit_ms=limit)
        return passes

    async def _final_status(self) -> str | None:
        dom = self.dom
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = await dom._quietly("query-migrate") or {}
            st = info.get("status")
            if st in ("completed", "failed", "cancelled"):
                if st == "completed":
                    self.stats["qemu_downtime_ms"] = info.get("downtime")
                    self.stats["qemu_total_ms"] = info.get("total-time")
                    self.stats["passes"] = (info.get("ram") or {}).get("dirty-sync-count")
                return st
            await asyncio.sleep(0.02)
        return None

    async def _roll_back(self, e: BaseException) -> None:
        """Before the commit point: the guest stays (or runs again) here."""
        dom = self.dom
        log.error("%s: migration to %s failed: %s", dom.name, self.where, _describe(e))
        if self.link is not None:
            # Best effort: tell the target to drop what it prepared (it
            # also does so when the connection simply ends).
            try:
                self.link.sock.settimeout(2)
                await _run(self.link.end, rp.ABORT)
            except Exception:
                pass
        if dom.qmp is not None and dom.pid and not await dom.cancel_outgoing(self.resume):
            log.error("%s: could not resume the guest after the failed migration", dom.name)
        dom.job = None
        dom._persist_quietly()

    def _failure(self, e: BaseException) -> BaseException:
        if isinstance(e, asyncio.CancelledError):
            return e
        dom = self.dom
        still = f"; {dom.name} is still {'running' if self.resume else 'paused'} here"
        if isinstance(e, rp.PeerError):
            return MigrationError(f"{self.where} refused domain {dom.name}: {e}{still}")
        return MigrationError(f"migrating {dom.name} to {self.where} failed: {_describe(e)}{still}")

    async def _uncertain(self, e: BaseException) -> None:
        dom = self.dom
        dom.paused = True
        dom.job = None
        dom._persist_quietly()
        msg = (f"the target was told to run {dom.name} but did not confirm ({_describe(e)}); "
               f"{dom.name} is kept paused here: check {self.host} and unpause it here only if it "
               "does not run there")
        log.error("%s: %s", dom.name, msg)
        raise MigrationError(msg) from None


def _describe(e: BaseException) -> str:
    if isinstance(e, (rp.ProtocolError, rp.PeerError, XendError)):
        return str(e)
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return f"{type(e).__name__}: {e}"


def _value(values: list, key: str):
    for v in values:
        if isinstance(v, list) and v and v[0] == key:
            return v[1] if len(v) > 1 else None
    return None


async def recover(dom) -> None:
    """After an xend restart on the source: a migration that had not
    reached its commit point is rolled back (the guest runs here again);
    one past it keeps the guest paused, as nobody knows whether the
    target runs it."""
    job = dom.job
    alive = dom.qmp is not None and dom.pid
    if job.get("phase") in ("commit", "done"):
        log.error("%s: xend stopped after telling %s to run the domain; kept paused here — "
                  "check the target before unpausing it", dom.name, job.get("target"))
        if alive:
            await dom._quietly("migrate_cancel")
        dom.paused = True
    else:
        log.info("%s: migration to %s interrupted by xend's exit; rolling back", dom.name, job.get("target"))
        if alive:
            await dom.cancel_outgoing(bool(job.get("resume")))
    dom.job = None
    dom.persist()


# ===================================================================== target
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
                self.ctx = tls_files(domains).server_context()
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
            if not await self.allowed(peer):
                self.budget.refuse(peer, "not in xend-relocation-hosts-allow")
                conn.close()
                return
            conn.setblocking(True)
            _tune(conn)
            try:
                link = await self.budget.run(self._wrap, conn)
            except (ssl.SSLError, OSError) as e:
                self.budget.refuse(peer, f"TLS handshake failed: {e}", "tls")
                conn.close()
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
                await _run(link.close)
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


class Incoming:
    def __init__(self, domains, link: rp.Link, peer: str, first: list | None = None):
        self.domains, self.link, self.peer = domains, link, peer
        self.first = first          # the (receive ...) already read by the server
        self.dom = None

    async def _send(self, msg: list) -> None:
        await _run(self.link.send, msg)

    async def run(self) -> None:
        try:
            first = self.first if self.first is not None else await _run(self.link.recv, LINK_TIMEOUT)
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
            hvmx.check_restore(cfg, req.firmware, f"the domain from {req.host}")
            if req.nvram:
                # The target's QEMU starts from the source's UEFI variables.
                self.domains.store.put(storekeys.nvram(cfg.uuid), req.nvram)
            self.dom = await self.domains.prepare_incoming(cfg, req.accel, req.machine)
        except (XendError, StoreError) as e:
            log.warning("relocation: refused domain %s from %s: %s", cfg.name, self.peer, e)
            await self._try_send(rp.err(getattr(e, "code", "refused"), str(e)))
            return
        try:
            await self._receive(req)
            self.domains.count_migration("in", True, self.link.sent)
        except BaseException as e:
            self.domains.count_migration("in", False, self.link.sent)
            log.error("relocation: domain %s from %s not received: %s", cfg.name, self.peer, _describe(e))
            if self.dom is not None and self.dom.state == "incoming":
                await self.dom.destroy(force=True)
            if not isinstance(e, (rp.ProtocolError, asyncio.CancelledError)):
                await self._try_send(rp.err("receive", _describe(e)))
            if isinstance(e, asyncio.CancelledError):
                raise

    async def _try_send(self, msg: list) -> None:
        try:
            self.link.sock.settimeout(5)
            await self._send(msg)
        except Exception:
            pass

    async def _receive(self, req: rp.Receive) -> None:
        dom = self.dom
        q = dom.qmp
        a, b = _socketpair()
        try:
            await q.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "events", "state": True}]})
            await q.send_fd(a.fileno(), "pyxen-migrate")
            a.close()
            dom._mig_status = None
            dom._mig_changed.clear()
            await q.execute("migrate-incoming", {"uri": "fd:pyxen-migrate"})
            await self._send(rp.ok(["domid", dom.domid]))
            faults.point("migrate-target-receiving")
            kind, problem = await _run(self.link.pump_in, b)
        finally:
            a.close()
            b.close()       # QEMU sees the end of its stream
        if kind == rp.ABORT:
            raise rp.ProtocolError("the source gave up the migration")
        if problem:
            raise rp.ProtocolError(problem)       # the source was told already
        status = await self._loaded()
        if status != "completed":
            info = await dom._quietly("query-migrate") or {}
            raise MigrationError(f"QEMU could not load the guest: "
                                 f"{info.get('error-desc') or 'migration ' + str(status)}"
                                 + qemulog.reason(dom.runtime().qemu_log, dom.qemu_log_start))
        await self._send(rp.ok("loaded"))
        faults.point("migrate-target-loaded")
        msg = await _run(self.link.recv, LINK_TIMEOUT)
        if msg[0] != "commit":
            raise rp.ProtocolError(f"the source did not commit ({msg[0]})")
        await self._commit(req.paused)

    async def _loaded(self) -> str | None:
        dom = self.dom
        deadline = time.monotonic() + LOAD_TIMEOUT
        while dom._mig_status not in ("completed", "failed", "cancelled"):
            if time.monotonic() > deadline or not dom.pid:
                return None
            dom._mig_changed.clear()
            try:
                await asyncio.wait_for(dom._mig_changed.wait(), 0.5)
            except asyncio.TimeoutError:
                info = await dom._quietly("query-migrate") or {}
                if info.get("status") in ("completed", "failed"):
                    dom._mig_status = info["status"]
        return dom._mig_status

    async def _commit(self, paused: bool) -> None:
        dom = self.dom
        async with dom.lock:
            # Durable before the guest runs: a restart now adopts it as a
            # running domain instead of rolling it back.
            dom.state = "running"
            dom.paused = paused
            dom.start_time = time.time()
            dom.persist()
            await hvmx.after_start(dom)
            if not paused:
                asked = time.time()
                await dom.qmp.execute("cont")
                answered = time.time()
            await dom.refresh_vcpus()
            dom.apply_placement(initial=True)
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
        dom.reg.emit("created", dom, migrated_from=self.peer)
        log.info("%s: arrived from %s and running (domid %d)", dom.name, self.peer, dom.domid)
        await self._send(rp.ok("running", ["resumed", f"{resumed:.6f}"] if not paused else ["paused", 1]))
