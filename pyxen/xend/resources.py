"""A domain's CPU and memory: the balloon (``xm mem-set``/``mem-max``),
vCPUs online (``xm vcpu-set``), pinning (``xm vcpu-pin`` and ``cpus=``),
and the credit and SEDF schedulers, both enforced through cgroups.
"""

from __future__ import annotations

import logging
import os

from ..config.domain import DomainConfig
from ..config.errors import ConfigError
from ..config.specs import format_cpuset, parse_cpuset
from ..hypervisor import cgroups
from ..hypervisor.qemu import argv as qargv
from ..hypervisor.qemu import process
from . import durable, guestreach
from .control import ControlError
from .errors import InvalidRequest, XendError
from .lifecycle import State

log = logging.getLogger("pyxen.domain")


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


def pin(tid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError as e:
        raise XendError(f"cannot pin vCPU thread {tid} to {format_cpuset(cpus)}: {e.strerror}") from None


class DomainResources:
    """Mixed into Domain: CPU and memory operations."""

    async def refresh_vcpus(self) -> None:
        self.vcpu_tids = await self.monitor.vcpu_threads()

    async def setup_cpus_and_memory(self) -> None:
        """Before the guest runs: balloon down to 'memory' when maxmem is larger."""
        if self.cfg.maxmem and self.cfg.maxmem > self.cfg.memory:
            await self.monitor.balloon(self.cfg.memory)

    async def vcpu_set(self, n: int) -> None:
        """Bring vCPUs 0..n-1 online and the rest offline, inside the guest."""
        async with self.lock:
            self.require_live("vcpu-set")
            maxv = qargv.max_vcpus(self.cfg)
            if not 1 <= n <= maxv:
                raise InvalidRequest(f"vcpus must be 1-{maxv} for domain {self.name} (maxvcpus {maxv}), got {n}")
            old = self.cfg.vcpus
            async with durable.change(self, "vcpu-set", config=True) as ch:
                ch.undo(lambda: self._vcpus_online(old, n, maxv))
                if self.cfg.maxvcpus is None:
                    # The maximum stays what the guest booted with: only the
                    # number online changes (a save or migration needs it).
                    self.cfg.maxvcpus = maxv
                await self._vcpus_online(n, old, maxv)
                self.cfg.vcpus = n

    async def _vcpus_online(self, n: int, current: int, maxv: int) -> None:
        """vCPUs 0..n-1 online and the rest offline: offline from the top
        down, online from the bottom up."""
        order = list(range(1, maxv))
        for i in (order if n > current else reversed(order)):
            want = "online" if i < n else "offline"
            try:
                await self.control.request(f"cpu {i} {want}")
            except ControlError as e:
                raise XendError(str(e)) from None

    async def mem_set(self, mib: int) -> None:
        async with self.lock:
            self.require_live("mem-set")
            boot = self.boot_memory()
            limit = min(self.cfg.maxmem or boot, boot)
            if (why := guestreach.mem_set_refusal(self.name, mib)) is not None:
                raise InvalidRequest(why)
            if not 16 <= mib <= limit:
                raise InvalidRequest(f"memory for domain {self.name} must be 16-{limit} MiB (maxmem), got {mib}")
            old = self.cfg.memory
            async with durable.change(self, "mem-set", config=True) as ch:
                await self.monitor.balloon(mib)
                ch.undo(lambda: self.monitor.balloon(old))
                self.cfg.memory = mib

    async def mem_max(self, mib: int) -> None:
        async with self.lock:
            boot = self.boot_memory()
            if mib < self.cfg.memory:
                raise InvalidRequest(f"maxmem {mib} MiB is below the domain's current memory ({self.cfg.memory} MiB)")
            if self.pid and mib > boot:
                raise InvalidRequest(f"maxmem cannot exceed {boot} MiB while domain {self.name} runs "
                                     "(its memory size is fixed at boot)")
            async with durable.change(self, "mem-max", config=True):
                self.cfg.maxmem = mib

    def boot_memory(self) -> int:
        """The RAM QEMU was started with (the balloon ceiling)."""
        if self.pid:
            args = process.cmdline(self.pid)
            if "-m" in args:
                try:
                    return int(args[args.index("-m") + 1].rstrip("M"))
                except (ValueError, IndexError):
                    pass
        return max(self.cfg.memory, self.cfg.maxmem or 0)

    def boot_vcpus(self) -> int:
        """The vCPUs QEMU was started with (online or not)."""
        if self.pid:
            args = process.cmdline(self.pid)
            if "-smp" in args:
                try:
                    return int(args[args.index("-smp") + 1].split(",")[0])
                except (ValueError, IndexError):
                    pass
        return qargv.max_vcpus(self.cfg)

    def booted_config(self) -> DomainConfig:
        """The config with the machine QEMU runs now: vCPUs and memory as
        it booted, however many are online or ballooned.  A save file or a
        migration carries this, so the restore rebuilds the same machine."""
        c = DomainConfig.from_sxp(self.cfg.to_sxp())
        mem, cpus = self.boot_memory(), self.boot_vcpus()
        if max(c.memory, c.maxmem or 0) != mem and mem >= c.memory:
            c.maxmem = mem
        if qargv.max_vcpus(c) != cpus and cpus >= c.vcpus:
            c.maxvcpus = cpus
        if max(c.memory, c.maxmem or 0) != mem or qargv.max_vcpus(c) != cpus:
            raise XendError(f"the config of domain {self.name} ({c.vcpus} vCPUs, {c.memory} MiB) cannot "
                            f"describe the machine it runs on ({cpus} vCPUs, {mem} MiB); "
                            "its state could not be restored")
        return c

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
            pin(tid, host_cpus(spec))

    async def vcpu_pin(self, vcpu: str, spec: str) -> None:
        self.refuse_if_busy("vcpu-pin")
        async with self.lock:
            self.require_live("vcpu-pin")
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
                pin(tid, cpus)

    async def sched_credit(self, weight: int | None, cap: int | None) -> None:
        self.refuse_if_busy("sched-credit")
        async with self.lock:
            if weight is not None and not 1 <= weight <= 65535:
                raise InvalidRequest(f"weight must be 1-65535, got {weight}")
            if cap is not None and not 0 <= cap <= 100 * (os.cpu_count() or 1):
                raise InvalidRequest(f"cap must be 0 (none) to {100 * (os.cpu_count() or 1)}, got {cap}")
            # Persisted first, enforced after: cgroups follow the record.
            async with durable.change(self, "sched-credit", config=True):
                if weight is not None:
                    self.cfg.cpu_weight = weight
                if cap is not None:
                    self.cfg.cpu_cap = cap
            self._enforce_sched()

    def _period_us(self) -> int:
        return max(1000, min(1_000_000, int(self.sedf["period"] * 1000)))

    def _enforce_sched(self) -> None:
        if self.pid and self.state == State.RUNNING:
            try:
                cgroups.apply(self.uuid, self.pid, self.cfg.cpu_weight, self.cfg.cpu_cap, self._period_us())
            except cgroups.CgroupError as e:
                raise XendError(f"cannot apply scheduler parameters: {e}") from None

    def sedf_info(self) -> dict:
        return sedf_view(self.sedf, self.cfg.cpu_cap, self.cfg.cpu_weight)

    async def sched_sedf(self, period=None, slice_=None, latency=None, extratime=None, weight=None) -> None:
        """SEDF on cgroups: a slice without extratime is a cap of slice/period;
        with extratime the domain may use spare CPU (no cap); weight is the
        share.  Period, slice, latency and extratime are kept as set (Xen
        kept each on its own), the cap is derived from them."""
        async with self.lock:
            cur = self.sedf_info()
            period = cur["period"] if period is None else float(period)
            slice_ = cur["slice"] if slice_ is None else float(slice_)
            latency = cur["latency"] if latency is None else float(latency)
            extratime = cur["extratime"] if extratime is None else int(extratime)
            if not 1 <= period <= 1000:
                raise InvalidRequest(f"period must be 1-1000 ms, got {period:g}")
            if not 0 <= slice_ <= period:
                raise InvalidRequest(f"slice must be 0-{period:g} ms (the period), got {slice_:g}")
            if not 0 <= latency <= 1000:
                raise InvalidRequest(f"latency must be 0-1000 ms, got {latency:g}")
            if extratime not in (0, 1):
                raise InvalidRequest(f"extratime must be 0 or 1, got {extratime}")
            async with durable.change(self, "sched-sedf", config=True):
                if weight is not None and int(weight) > 0:
                    self.cfg.cpu_weight = min(65535, int(weight))
                self.cfg.cpu_cap = sedf_cap(period, slice_, extratime)
                self.sedf = {"period": period, "slice": slice_, "latency": latency, "extratime": extratime}
            self._enforce_sched()


def sedf_cap(period: float, slice_: float, extratime: int) -> int:
    """The CPU cap (percent, 0: none) SEDF's parameters come to on cgroups."""
    return 0 if extratime or slice_ == 0 else max(1, round(100 * slice_ / period))


def sedf_record(raw) -> dict:
    """SEDF parameters read back (a runtime record, a save file's
    metadata): the known numeric ones only, anything else dropped."""
    out = {"period": 100.0, "slice": 0.0, "latency": 0.0, "extratime": 1}
    if isinstance(raw, dict):
        for k in out:
            v = raw.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1000:
                out[k] = int(v) if k == "extratime" else float(v)
        if "slice" not in raw:      # a record from before the slice was kept: derive it
            out.pop("slice")
    return out


def sedf_view(sedf: dict, cap: int, weight: int) -> dict:
    """What xm sched-sedf prints: the parameters as last set, while the cap
    is still the one they gave; once something else set the cap (xm
    sched-credit, an old record without them), the slice and extratime
    that cap stands for."""
    period = float(sedf.get("period") or 100.0)
    latency = float(sedf.get("latency") or 0.0)
    slice_, extra = sedf.get("slice"), sedf.get("extratime")
    if not isinstance(slice_, (int, float)) or extra not in (0, 1) or sedf_cap(period, slice_, extra) != cap:
        slice_, extra = cap * period / 100.0, 0 if cap else 1
    return {"period": period, "slice": float(slice_), "latency": latency, "extratime": extra, "weight": weight}
