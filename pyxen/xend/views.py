"""A domain as Xen's tools show it: ``xm list`` flags and status codes,
the info record, the ``(domain ...)`` SXP of ``xm list -l``, vCPU and
device listings, and the counters xentop reads.

Read-only: nothing here changes a domain or talks to QEMU except the
block counters (one query, short deadline).
"""

from __future__ import annotations

import logging
import os
import time

from ..config.errors import ConfigError
from ..config.specs import disk_number, format_cpuset
from ..hypervisor.qemu import argv as qargv
from ..hypervisor.qemu import process
from .lifecycle import State

log = logging.getLogger("pyxen.domain")

SHUTDOWN_REASONS = {"poweroff": 0, "reboot": 1, "suspend": 2, "crash": 3, "halt": 4}


def affinity_text(cpus: set[int], host: set[int]) -> str:
    if not cpus:
        return "no cpus"
    if host <= cpus:
        return "any cpu"
    return format_cpuset(cpus)


class DomainViews:
    """Mixed into Domain: the layouts, computed from its public state."""

    def vcpu_stats(self) -> list[tuple[str, float, int]]:
        if not self.pid:
            return []
        return [process.thread_stat(self.pid, t) for t in self.vcpu_tids]

    def flags(self, stats: list | None = None) -> str:
        if self.state != State.RUNNING or self.paused:
            stats = []
        elif stats is None:
            stats = self.vcpu_stats()
        running = any(s[0] == "R" for s in stats)
        f = ["-"] * 6
        if self.state == State.RUNNING and not self.paused:
            f[0 if running else 1] = "r" if running else "b"
        if (self.paused and self.state == State.RUNNING) or self.state == State.INCOMING:
            f[2] = "p"       # an arriving migration is paused until the source commits
        if self.state == State.SHUTDOWN:
            f[3] = "s"
        if self.state == State.CRASHED:
            f[4] = "c"
        if self.state == State.DYING:
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
            "lifecycle": str(self.state),
        }

    def status_code(self) -> int:
        # Xen's (status N): 0 halted 1 paused 2 running 3 suspended 4 shutdown 5 crashed 6 unknown
        if self.state == State.RUNNING:
            return 1 if self.paused else 2
        return {State.SHUTDOWN: 4, State.CRASHED: 5, State.DYING: 4, State.CREATING: 6}.get(self.state, 6)

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
        for k in ("maxvcpus", "cpus", "console", "description", "on_host_failure"):
            if k in fields:
                out.append(fields[k])
        out.append(fields["image"])
        out += [item for item in cfg[1:] if isinstance(item, list) and item and item[0] == "device"]
        out += [["status", info["status"]], ["state", info["state"]],
                ["shutdown_reason", SHUTDOWN_REASONS.get(self.shutdown_reason or "", 0)],
                ["cpu_time", round(info["cpu_time"], 6)], ["online_vcpus", info["online_vcpus"]],
                ["up_time", round(info["up_time"], 2)], ["start_time", round(self.start_time, 2)]]
        return out

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

    def vif_devices(self) -> list[dict]:
        # No Xen rings or event channels here: those columns show -1, Xen's
        # own value for a field a device does not have.
        out = []
        for devid, spec in self.vifs():
            out.append({"idx": devid, "backend-id": 0, "handle": devid, "mac": spec.get("mac", ""),
                        "state": 4 if self.pid else 6, "event-ch": -1, "tx-ring-ref": -1,
                        "rx-ring-ref": -1, "be-path": f"/local/domain/0/backend/vif/{self.domid}/{devid}",
                        "vifname": self.net.vif_name(self.domid, devid, spec),
                        "config": dict(spec)})
        return out

    async def io_stats(self) -> dict:
        """Block and network counters for xentop (block from QEMU, net from the taps)."""
        st = {"vbds": len(self.cfg.disks), "vbd_rd": 0, "vbd_wr": 0, "vbd_oo": 0, "vbd_rsect": 0,
              "vbd_wsect": 0, "nets": len(self.cfg.vifs), "net_tx": 0, "net_rx": 0}
        if self.monitor is not None and self.state == State.RUNNING:
            try:
                for dev in await self.monitor.blockstats():
                    b = dev.get("stats", {})
                    st["vbd_rd"] += b.get("rd_operations", 0)
                    st["vbd_wr"] += b.get("wr_operations", 0)
                    st["vbd_rsect"] += b.get("rd_bytes", 0) // 512
                    st["vbd_wsect"] += b.get("wr_bytes", 0) // 512
            except Exception as e:
                log.debug("%s: blockstats unavailable: %s", self.name, e)
        for devid, spec in self.vifs():
            name = self.net.vif_name(self.domid, devid, spec)
            base = f"/sys/class/net/{name}/statistics"
            try:
                # The tap's receive side is what the domain transmitted.
                st["net_tx"] += int(open(f"{base}/rx_bytes").read())
                st["net_rx"] += int(open(f"{base}/tx_bytes").read())
            except OSError:
                pass
        return st
