"""xend in a cluster: the glue between the registry and pyxen.cluster.

Configured by ``(xend-cluster-etcd ...)``; without it xend keeps its
FileStore and none of this runs.  With it:

* the store is an :class:`~pyxen.etcdstore.EtcdStore` opened as
  ``xend-cluster-name`` with the pool's TLS files (or the
  ``xend-cluster-tls-*`` ones); a first read must succeed or xend does not
  start (one line naming the endpoints and why);
* this host joins (:class:`~pyxen.cluster.membership.Membership`) before
  it re-adopts its domains, so their locks go on its lease; the lease id
  is kept in ``var/run/pyxen/cluster-lease`` so a restarted xend takes the
  same lease back while it lives and its domains' locks never lapse;
* every create, restore and arriving migration goes through ``admit`` (clusterlocks.py)
  (the domain lock and the claims on its shared disks,
  :mod:`pyxen.cluster.claims`), a domain that ends drops both
  (:meth:`released`), and the shared config of a domain that another host
  owns now is never deleted with this host's copy (:meth:`may_forget_config`);
* the fencer runs as a task on xend's loop, and its kills also from a
  watchdog thread (a blocked loop must not delay them); the keep-alive runs
  in its own thread (the loop may block on etcd for a timeout; the lease
  must not);
* etcd's watch on ``cluster/`` becomes events on xend's stream
  (``cluster-host-up``, ``cluster-host-lost``, ``cluster-owner``...);
* :meth:`add_periodic` runs other code once a second (clusterops's
  listing), :meth:`add_task` a task until xend stops, and :meth:`on_change`
  is told of every host lost and lock gone as the watch sees it (clusterops's
  failover scan starts from that, not from a poll).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from .. import storekeys
from ..cluster import ClusterError
from ..cluster.fence import Fencer
from ..cluster.lock import DomainLock, LockHeld
from ..cluster.membership import Membership
from ..etcdstore import EtcdStore, parse_endpoints
from ..fileutil import atomic_write
from ..pki import TlsFiles
from ..store import StoreError
from .clusterfence import FenceActions
from .clusterlocks import LockActions
from .errors import Conflict, XendError

log = logging.getLogger("pyxen.xend")

# Files in var/run/pyxen shared with the lease keeper (pyxen/xend/keeper.py):
FENCED_FILE = "cluster-fenced"       # QEMU pids it stopped while no xend ran
RENEWED_FILE = "cluster-renewed"     # xend's last confirmed renewal, time.monotonic()
RESTART_FILE = "cluster-restart"     # uuids with on_host_failure='restart' (the keeper kills those)


def configured(cfg) -> bool:
    return bool(str(cfg["xend-cluster-etcd"]).strip())


def cluster_name(cfg) -> str:
    return cfg["xend-cluster-name"] or storekeys.local_host()


def open_store(paths, cfg, check: bool = True) -> EtcdStore:
    """The cluster store, proven reachable (with *check*); XendError (one
    line) if not."""
    try:
        endpoints = parse_endpoints(cfg["xend-cluster-etcd"])
    except ValueError as e:
        raise XendError(f"(xend-cluster-etcd ...): {e}") from None
    tls = TlsFiles.for_host(paths.etc, cfg["xend-cluster-tls-cert"], cfg["xend-cluster-tls-key"],
                            cfg["xend-cluster-tls-ca"])
    if any(urlsplit(e).scheme == "https" for e in endpoints):
        for what, p in (("CA certificate", tls.ca), ("certificate", tls.cert), ("key", tls.key)):
            if not Path(p).is_file():
                raise XendError(f"cluster: the {what} for etcd, {p}, does not exist "
                                f"(`pyxen ca` / `pyxen cert`, or xend-cluster-tls-*)")
    ttl = int(cfg["xend-cluster-lease-ttl"])
    margin = int(cfg["xend-cluster-fence-margin"])
    if ttl < 2 or not 0 < margin < ttl:
        raise XendError(f"(xend-cluster-fence-margin {margin}) must be between 1 and "
                        f"(xend-cluster-lease-ttl {ttl}) minus 1")
    # A store call (made on xend's loop) may block at most half the fence
    # margin, so a dead etcd can delay the fencer only that much: it still
    # pauses the domains before the lease's TTL.  (The keep-alive thread
    # has its own timeout, TTL/4.)
    store = EtcdStore(endpoints, cluster_name(cfg), str(tls.ca), str(tls.cert), str(tls.key),
                      timeout=max(0.5, margin / 2))
    if check:
        try:
            store.ping()
        except StoreError as e:
            raise XendError(f"cluster configured but {e}; xend not started") from None
    return store


def _own_address(endpoint: str) -> str:
    """The local address this host reaches *endpoint* from (no packet sent)."""
    u = urlsplit(endpoint)
    try:
        with socket.socket(socket.AF_INET6 if ":" in (u.hostname or "") else socket.AF_INET,
                           socket.SOCK_DGRAM) as s:
            s.connect((u.hostname, u.port or 2379))
            return s.getsockname()[0]
    except OSError:
        return ""


def _bridges() -> list[str]:
    try:
        return sorted(n for n in os.listdir("/sys/class/net") if os.path.isdir(f"/sys/class/net/{n}/bridge"))
    except OSError:
        return []


class ClusterNode(LockActions, FenceActions):
    """This xend's part in the cluster (see the module docstring)."""

    def __init__(self, paths, cfg, store: EtcdStore):
        self.paths, self.cfg, self.store = paths, cfg, store
        self.name = store.host
        self.domains = None
        self.lock_enabled = cfg["xend-domain-lock"] if "xend-domain-lock" in getattr(cfg, "given", ()) else True
        self.address = cfg["xend-cluster-address"] or _own_address(store.endpoints[0])
        self._lease_file = paths.run / "cluster-lease"
        self.membership = Membership(store, self.name, int(cfg["xend-cluster-lease-ttl"]), info=self.info,
                                     previous_lease=self._previous_lease(), on_lease_change=self._save_lease,
                                     on_renewed=self._renewed)
        self.lock = DomainLock(store, self.membership)
        self.fencer = Fencer(self.membership, self.lock, cfg["xend-cluster-fence"],
                             float(cfg["xend-cluster-fence-margin"]), fence=self._fence, resume=self._resume,
                             name=self._name, on_event=self._fence_event, superseded=self._superseded,
                             present=lambda uuid: self.domains is not None and uuid in self.domains.by_uuid)
        # What another host waits after a lock is gone before taking the
        # domain (clusterops's failover reads it; the fence is the other half).
        self.grace = int(cfg["xend-cluster-grace"])
        self.state = "up"
        self._info: dict = {}
        self._periodic: list = []
        self._on_change: list = []
        self._was_paused: set[str] = set()     # paused before the fence: stays paused after it
        self._restart_listed: str | None = None
        self._unforgotten: dict = {}            # fence-killed domains whose records await etcd
        # Arriving migrations not yet running here (relocation's commit ends it).
        self.arriving: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._watchdog_stop = threading.Event()
        self._watch = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------- lease file
    def _previous_lease(self) -> int:
        try:
            return int(self._lease_file.read_text().strip(), 16)
        except (OSError, ValueError):
            return 0

    def _save_lease(self, lease: int) -> None:
        try:
            atomic_write(self._lease_file, f"{lease:x}\n".encode(), 0o600)
        except OSError as e:
            log.warning("cluster: cannot record the lease id in %s: %s", self._lease_file, e)

    def _renewed(self, when: float) -> None:
        """The keeper takes over from this instant (CLOCK_MONOTONIC is the
        machine's, the same in both processes), not from when it noticed
        xend was gone."""
        try:
            (self.paths.run / RENEWED_FILE).write_text(f"{when}\n")
        except OSError:
            pass

    # ------------------------------------------------------------ the record
    def _snapshot(self) -> None:
        """The host record's fields, computed on the loop (the keep-alive
        thread publishes the last snapshot)."""
        d = self.domains
        cfg = self.cfg
        self._info = {
            "address": self.address,
            "relocation_port": int(cfg["xend-relocation-port"]) if cfg["xend-relocation-server"] else 0,
            "relocation": (f"{self.address}:{cfg['xend-relocation-port']}"
                           if cfg["xend-relocation-server"] and self.address else ""),
            "api": f"{self.address}:{cfg['xend-port']}" if cfg["xend-http-server"] and self.address else "",
            "free_memory": d.free_memory() if d is not None else 0,
            "vcpus": os.cpu_count() or 1,
            "domains": len(d.all()) if d is not None else 0,
            "bridges": _bridges(),
            "state": self.state,
        }

    def _list_restart(self) -> None:
        """Tell the keeper which domains to kill rather than stop."""
        from .clusterfence import restarted_elsewhere
        text = "".join(f"{d.uuid}\n" for d in self.domains.all() if restarted_elsewhere(d))
        if text != self._restart_listed:
            try:
                atomic_write(self.paths.run / RESTART_FILE, text.encode(), 0o600)
                self._restart_listed = text
            except OSError as e:
                log.warning("cluster: cannot write %s: %s", RESTART_FILE, e)

    def info(self) -> dict:
        return dict(self._info)

    def set_state(self, state: str) -> None:
        """``up``, ``fenced`` or ``maintenance`` (placement skips the last two)."""
        if state not in ("up", "fenced", "maintenance"):
            raise ValueError(f"unknown host state {state!r}")
        self.state = state
        self._snapshot()
        self.membership.publish()

    # -------------------------------------------------------------- lifecycle
    def join(self, domains) -> None:
        """Join before the domains are re-adopted (their locks need the lease)."""
        self.domains = domains
        self._snapshot()
        if not self.lock_enabled:
            log.warning("cluster: (xend-domain-lock no): domains are NOT locked; two hosts may run one "
                        "domain from one disk")
        try:
            self.membership.join()
        except ClusterError as e:
            raise XendError(str(e)) from None
        self.recover_keeper_fence()

    def recover_keeper_fence(self) -> None:
        """QEMUs the keeper stopped (SIGSTOP) while no xend ran and etcd was
        out of reach: each continues only once this host holds its lock
        again; one whose lock is another host's now is killed (it runs
        there).  Before adoption, so adoption sees running QEMUs."""
        from ..hypervisor.qemu import process
        f = self.paths.run / FENCED_FILE
        try:
            pids = [int(x) for x in f.read_text().split()]
        except (OSError, ValueError):
            return
        for pid in pids:
            args = process.cmdline(pid)
            if "-uuid" not in args or "-name" not in args:
                continue
            uuid = args[args.index("-uuid") + 1]
            name = args[args.index("-name") + 1].split(",")[0]
            try:
                self.lock.acquire(uuid, name)
            except LockHeld as e:
                log.error("cluster: %s (stopped by the keeper): %s; killing this host's copy", name, e)
                process.kill(pid)
                continue
            except (ClusterError, StoreError) as e:
                raise XendError(f"cluster: cannot retake the lock of {name}, which the keeper stopped: {e}") \
                    from None
            process.kill(pid, signal.SIGCONT)
            log.warning("cluster: %s continues: the keeper had stopped it, this host holds its lock again", name)
        f.unlink()

    async def start(self) -> None:
        """After adoption: retake the adopted domains' locks, start the
        fencer, the watch and the periodic loop."""
        self._loop = asyncio.get_running_loop()
        for dom in list(self.domains.all()):
            if not dom.pid:
                continue
            try:
                self.acquire(dom.uuid, dom.name)
            except Conflict as e:
                if dom.paused:
                    # Paused (a migration whose end is unknown, a fence):
                    # harmless; unpausing it needs its lock, so it stays so.
                    log.error("cluster: %s: %s; this host's copy stays paused", dom.name, e)
                    continue
                # Running here and restarted elsewhere while this xend was
                # away: never run it twice.
                await self._drop_superseded(dom, str(e))
        self._watch = self.membership.watch(self._on_cluster_event)
        self._watchdog = threading.Thread(target=self._fence_watchdog, name="cluster-fence-watchdog",
                                          daemon=True)
        self._watchdog.start()
        self._start_keeper()
        self._tasks = [asyncio.create_task(self.fencer.run(), name="cluster-fence"),
                       asyncio.create_task(self._tick(), name="cluster-periodic")]
        log.info("cluster: %s is up (lease %x, address %s, %d etcd endpoint(s), locks %s, fence %s)",
                 self.name, self.membership.lease, self.address or "?", len(self.store.endpoints),
                 "on" if self.lock_enabled else "OFF", self.cfg["xend-cluster-fence"])

    def _start_keeper(self) -> None:
        """The process that keeps the lease (and the fence) when xend is gone
        (pyxen/xend/keeper.py); it outlives xend by design."""
        err = open(self.paths.log / "keeper.log", "ab")
        try:
            subprocess.Popen([sys.executable, "-m", "pyxen.xend.keeper", "--lease", f"{self.membership.lease:x}",
                              "--xend-pid", str(os.getpid())], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, close_fds=True)
        except OSError as e:
            log.error("cluster: cannot start the lease keeper: %s; a dead xend will not keep its locks", e)
        finally:
            err.close()

    def _fence_watchdog(self) -> None:
        """Kill the QEMUs another host may restart the moment the fence is
        due, off the event loop (clusterfence.kill_overdue)."""
        from .clusterfence import kill_overdue
        mode = self.cfg["xend-cluster-fence"]
        while not self._watchdog_stop.wait(0.25):
            try:
                kill_overdue(self.domains, self.membership, self.fencer.deadline, mode)
            except Exception:      # noqa: BLE001 — the watchdog must not die; the loop's fencer remains
                log.exception("cluster: fence watchdog failed")

    async def stop(self) -> None:
        self._watchdog_stop.set()
        self.fencer.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):    # noqa: BLE001
                pass
        if self._watch is not None:
            self._watch.cancel()
        # Domains keep running when xend stops, so their locks must stay:
        # the lease is revoked only when nothing runs here.
        running = any(d.pid for d in self.domains.all()) if self.domains else False
        if running:
            log.info("cluster: xend stops with domains running: the lease keeper keeps their locks")
        await asyncio.get_running_loop().run_in_executor(None, self.membership.leave, not running)
        self.store.close()

    async def _relock(self) -> None:
        """The keep-alive thread had to take a new lease (the old one ended
        while this host was cut off): the locks and claims went with it.
        Retake them for every domain that still runs here; one that another
        host owns now is destroyed here.  (Paused-by-fence domains are the
        fencer's: it retakes theirs before resuming.)"""
        log.warning("cluster: new lease %x; retaking the locks of this host's domains", self.membership.lease)
        for dom in list(self.domains.all()):
            if not dom.pid or dom.uuid in self.fencer.paused:
                continue
            try:
                self.admit(dom.cfg)
            except Conflict as e:
                await self._drop_superseded(dom, str(e))
            except XendError as e:
                log.error("cluster: cannot retake the lock of %s yet: %s", dom.name, e)

    def add_periodic(self, fn) -> None:
        """Run ``await fn()`` about once a second while xend runs."""
        self._periodic.append(fn)

    def add_task(self, coro, name: str) -> None:
        """Run *coro* as a task of this node's (cancelled by :meth:`stop`)."""
        self._tasks.append(asyncio.create_task(coro, name=name))

    def on_change(self, fn) -> None:
        """Call ``fn(ClusterEvent)`` on the loop when a host's record or a
        domain's owner key is deleted (a host lost, a lock gone): what the
        failover waits for, so it need not poll for it."""
        self._on_change.append(fn)

    async def _tick(self) -> None:
        lease = self.membership.lease
        while True:
            await asyncio.sleep(1.0)
            self._snapshot()
            self._list_restart()
            if self._unforgotten and not self.fencer.fenced:
                self.forget_pending()
            if self.membership.lease != lease:
                lease = self.membership.lease
                await self._relock()
            for fn in list(self._periodic):
                try:
                    await fn()
                except Exception:    # noqa: BLE001 — one hook's bug must not stop the others
                    log.exception("cluster: periodic task %r failed", fn)

    # ---------------------------------------------------------------- events
    def _on_cluster_event(self, ev) -> None:
        """From the watch thread: hand the event to the loop."""
        if self._loop is None or self.domains is None:
            return
        rec = {"time": time.time(), **ev.to_json()}
        self._loop.call_soon_threadsafe(self.domains.emit_raw, rec)
        if ev.kind in ("host-lost", "owner-released"):
            for fn in self._on_change:
                self._loop.call_soon_threadsafe(fn, ev)

    def _fence_event(self, kind: str, detail: str) -> None:
        if self.domains is not None:
            self.domains.emit_raw({"time": time.time(), "event": f"cluster-{kind}", "host": self.name,
                                   "detail": detail})
        if kind == "fenced":
            self.state = "fenced"
        elif kind == "recovered" and self.state == "fenced":
            self.state = "up"
            self._snapshot()
            self.membership.publish()
