"""The lease keeper: this host's lease and fence while its xend is not running.

xend can stop (``xend stop``) or die (``kill -9``) while its QEMUs run on.
Without it nobody renews the host's lease, the domain locks lapse after
the TTL, and another host may start a domain that still runs here — the
double run the cluster exists to prevent.  So xend, once joined, starts
this small process (``python -m pyxen.xend.keeper``, its own session, so
it outlives xend).  While xend runs it only watches.  While no xend runs:

* as long as a QEMU of this root runs, it renews the lease, so the locks
  stay truthful (the guests *are* running here);
* if the renewals fail for TTL minus the fence margin (this host cut off
  from etcd), it kills the QEMUs of ``on_host_failure='restart'`` domains
  (xend lists them in ``cluster-restart``: another host restarts them) and
  stops every other QEMU with SIGSTOP — the fence, with no QMP and
  no xend needed — and records their pids in ``var/run/pyxen/cluster-fenced``;
* when no QEMU runs any more it revokes the lease and exits.

A new xend takes the lease back (``cluster-lease``); before it re-adopts
anything, :meth:`ClusterNode.recover_keeper_fence` continues each stopped
QEMU only after taking its lock again (or kills it if another host has
it), and the keeper, seeing another xend, exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from ..paths import Paths
from .cluster import FENCED_FILE, RENEWED_FILE, RESTART_FILE, open_store

log = logging.getLogger("pyxen.keeper")



def _cmd(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def xend_alive(pid: int | None) -> bool:
    args = _cmd(pid) if pid else []
    return any("xend" in a for a in args[:3])


def qemu_pids(paths: Paths) -> list[int]:
    """Live QEMUs of this root, by their pid files (checked against /proc)."""
    out = []
    for f in (paths.run / "qemu").glob("*/qemu.pid"):
        try:
            pid = int(f.read_text().strip())
        except (OSError, ValueError):
            continue
        args = _cmd(pid)
        # The pid file is this root's; the process must still be a QEMU
        # (a recycled pid is not).  Its paths may be descriptors (confined
        # QEMUs), so the command line is not searched for the root.
        if args and "qemu" in os.path.basename(args[0]) and "-uuid" in args:
            out.append(pid)
    return out


def _uuid_of(pid: int) -> str:
    args = _cmd(pid)
    return args[args.index("-uuid") + 1] if "-uuid" in args[:-1] else ""


def _restart_uuids(paths: Paths) -> set[str]:
    try:
        return set((paths.run / RESTART_FILE).read_text().split())
    except OSError:
        return set()


def _xend_pid(paths: Paths) -> int | None:
    try:
        return int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def run(paths: Paths, store, lease: int, ttl: int, margin: float, xend_pid: int) -> int:
    every = max(0.5, ttl / 4)
    # Checked often, renewed every TTL/4 with a short timeout: the fence
    # must land before TTL even if a renewal hangs (margin/2 at most).
    tick, call_timeout = 0.25, max(0.3, margin / 2)
    last_ok = last_try = time.monotonic()
    fenced: list[int] = []
    while True:
        now_xend = _xend_pid(paths)
        if xend_alive(xend_pid):
            # Our xend renews the lease itself; from its last renewal on it is ours.
            try:
                last_ok = float((paths.run / RENEWED_FILE).read_text())
            except (OSError, ValueError):
                last_ok = time.monotonic() - every
            time.sleep(tick)
            continue
        if now_xend and now_xend != xend_pid and xend_alive(now_xend):
            log.info("keeper: xend %d took over; exiting", now_xend)
            return 0
        pids = qemu_pids(paths)
        if not pids and not fenced:
            log.info("keeper: no xend and no guest running; revoking lease %x", lease)
            try:
                store.revoke_lease(lease)
            except Exception as e:      # noqa: BLE001 — it expires anyway
                log.warning("keeper: cannot revoke the lease: %s", e)
            return 0
        if not fenced and time.monotonic() - last_try >= every:
            last_try = sent = time.monotonic()
            try:
                # The send time, not the answer's: etcd reset the TTL after
                # it, so the lease lives at least until sent + TTL.
                if store.keepalive(lease, timeout=call_timeout) > 0:
                    last_ok = sent
                else:
                    last_ok = 0.0       # the lease is gone: the locks are, too
            except Exception as e:      # noqa: BLE001
                log.warning("keeper: keep-alive failed: %s", e)
                last_try = time.monotonic() - every + tick     # retry soon, not a whole interval on
        if not fenced:
            if time.monotonic() - last_ok > ttl - margin:
                restart = _restart_uuids(paths)
                stopped = []
                for pid in pids:
                    if _uuid_of(pid) in restart:
                        os.kill(pid, signal.SIGKILL)     # another host restarts it: free its disks
                    else:
                        os.kill(pid, signal.SIGSTOP)
                        stopped.append(pid)
                fenced = stopped        # all killed: nothing runs, the next round exits
                (paths.run / FENCED_FILE).write_text("".join(f"{p}\n" for p in stopped))
                log.error("keeper: no xend and no etcd keep-alive for over %.0f s: stopped QEMU %s, "
                          "killed the rest (on_host_failure=restart)", ttl - margin,
                          " ".join(map(str, stopped)) or "none")
        time.sleep(tick if not fenced else 1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pyxen-keeper")
    p.add_argument("--lease", required=True)
    p.add_argument("--xend-pid", type=int, required=True)
    a = p.parse_args(argv)
    paths = Paths.from_env()
    from ..config.xendconfig import XendConfig
    cfg = XendConfig.load(paths.xend_config)
    logging.basicConfig(filename=str(paths.log / "keeper.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        store = open_store(paths, cfg, check=False)
    except Exception as e:      # noqa: BLE001
        log.error("keeper: %s", e)
        return 1
    return run(paths, store, int(a.lease, 16), int(cfg["xend-cluster-lease-ttl"]),
               float(cfg["xend-cluster-fence-margin"]), a.xend_pid)


if __name__ == "__main__":
    sys.exit(main())
