"""Live migration benchmark (issue 7): ``xm migrate --live`` between two
xends in two network namespaces, over TLS as users run it, against plain
QEMU migrating the same guest to QEMU in the same run.

Two "hosts" are two network namespaces joined by a veth pair
(10.78.0.1 <-> 10.78.0.2).  Each runs an xend on its own root under /tmp
with ``(xend-relocation-server yes)`` on its address and TLS on (the
default), with certificates made by ``pyxen ca`` / ``pyxen cert``.

For each guest size (256 MiB, 1 GiB) and workload (idle; dirtying) a guest
of the default image boots to its login prompt, then:

* **pyxen**: the guest is migrated back and forth between the hosts N
  times; each run is timed as wall clock around ``xm migrate --live``
  (spawn to exit), and xend's own result (``seconds``, ``bytes``,
  ``downtime_ms`` = target RESUME minus source STOP, ``qemu_downtime_ms``,
  ``qemu_total_ms``) is taken from the ``migrated`` event on the source
  xend's event stream: the same dict ``POST /api/domains/{dom}/migrate``
  returns.
* **raw**: ``qemu-system-x86_64`` with the argv pyxen's own builder makes
  for the same config (kernel, initrd, memory, devices), minus ``-S``, runs
  in one namespace; a second one with ``-incoming tcp:IP:PORT`` waits in
  the other; the bench sends ``migrate tcp:IP:PORT`` over QMP with the same
  parameters xend sets (events, auto-converge, ``downtime-limit`` 50 ms,
  unlimited bandwidth).  QEMU's ``total-time`` and ``downtime`` come from
  ``query-migrate``; the guest-visible downtime is the target's RESUME
  event minus the source's STOP event (QMP timestamps, one host clock).
  Back and forth N times too.

The dirtying workload, started from the guest's console: a 64 MiB block of
random data on a tmpfs is copied over a second 64 MiB tmpfs file with
``dd conv=notrunc``, then ``sleep 1``, forever: 64 MiB of the same pages
rewritten about once a second (~64 MiB/s, less if the guest is slow).

Targets (issue 17 item 2): an idle guest's guest-visible downtime has a
median <= 25 ms over at least 6 runs and no run above 40 ms; ``xm migrate``
total time within 1.2x of raw QEMU's total-time.

The pure parts (``summarize``, ``compare``, ``format_table``) are
unit-tested without booting anything.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from pyxen.config.domain import DomainConfig
from pyxen.hypervisor.qemu import argv as qargv
from pyxen.hypervisor.qemu.kcache import boot_kernel
from pyxen.paths import Paths
from pyxen.testing.guest import GuestConsole, GuestError

from .boot import host_info
from .harness import Harness, kill_qemus_under

SIZES = (256, 1024)           # MiB of guest memory
WORKLOADS = ("idle", "dirty")
ACCEL = "tcg"
A_IP, B_IP = "10.78.0.1", "10.78.0.2"
RAW_PORT = 8102               # raw QEMU's -incoming port (xend's relocation port is 8002)
DOWNTIME_LIMIT_MS = 50        # what xend asks QEMU for first (migration.DEFAULT_DOWNTIME_MS)
UNLIMITED = 1 << 40           # bytes/s, as xend sets it
DIRTY_MIB = 64                # the dirtying loop's working set, rewritten about once a second
DIRTY_SETUP = ("mkdir -p /mnt/dirty && mount -t tmpfs -o size=%(tmpfs)dm tmpfs /mnt/dirty && "
               "dd if=/dev/urandom of=/mnt/dirty/seed bs=1M count=%(mib)d 2>/dev/null && "
               "cp /mnt/dirty/seed /mnt/dirty/work")
DIRTY_LOOP = ("(while :; do dd if=/mnt/dirty/seed of=/mnt/dirty/work bs=1M conv=notrunc 2>/dev/null; "
              "sleep 1; done) >/dev/null 2>&1 & true")
DIRTY_SCRIPT = DIRTY_SETUP + "; " + DIRTY_LOOP
SETTLE_S = 2.0                # between runs: let the arrived guest run before it moves again
TARGET_DOWNTIME_MS = 25       # idle guests, guest-visible: the median ...
MAX_DOWNTIME_MS = 40          # ... and no single run above this
MIN_DOWNTIME_RUNS = 6         # the median of at least this many runs
TARGET_RATIO = 1.2            # xm migrate wall time / raw QEMU total-time
DEFAULT_RUNS = {"idle": MIN_DOWNTIME_RUNS, "dirty": 2}
MIB = 1 << 20


# ------------------------------------------------------------ pure parts
def _stats(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def summarize(pyxen: list[dict], raw: list[dict]) -> dict:
    """Medians/min/max of one case's runs.

    A pyxen run is {"wall_s", "seconds", "bytes", "downtime_ms", "qemu_downtime_ms", ...}
    (wall_s: around ``xm migrate``; the rest: xend's result); a raw run is
    {"wall_s", "target_start_s", "total_ms", "downtime_ms" (QEMU's), "visible_downtime_ms",
    "bytes"}."""
    if not pyxen or not raw:
        raise ValueError("no samples")
    return {
        "pyxen": {"wall_s": _stats([r["wall_s"] for r in pyxen]),
                  "xend_s": _stats([r.get("seconds") for r in pyxen]),
                  "downtime_ms": _stats([r.get("downtime_ms") for r in pyxen]),
                  "qemu_downtime_ms": _stats([r.get("qemu_downtime_ms") for r in pyxen]),
                  "mib": _stats([r["bytes"] / MIB for r in pyxen if r.get("bytes") is not None])},
        "raw": {"total_s": _stats([r["total_ms"] / 1000 for r in raw]),
                "wall_s": _stats([r["wall_s"] for r in raw]),
                # like xend's prepare step: the target QEMU started (to QMP ready) first
                "with_start_s": _stats([r["wall_s"] + r["target_start_s"] for r in raw
                                        if r.get("target_start_s") is not None]),
                "downtime_ms": _stats([r.get("visible_downtime_ms") for r in raw]),
                "qemu_downtime_ms": _stats([r.get("downtime_ms") for r in raw]),
                "mib": _stats([r["bytes"] / MIB for r in raw if r.get("bytes") is not None])},
    }


def compare(summary: dict, workload: str) -> dict:
    """pyxen / raw total time and the verdicts (downtime only judged idle)."""
    p, r = summary["pyxen"], summary["raw"]
    ratio = p["wall_s"]["median"] / r["total_s"]["median"]
    xend_ratio = p["xend_s"]["median"] / r["total_s"]["median"] if p["xend_s"] else None
    out = {"ratio": round(ratio, 2), "xend_ratio": round(xend_ratio, 2) if xend_ratio else None,
           "target_ratio": TARGET_RATIO, "ratio_pass": ratio <= TARGET_RATIO}
    if workload == "idle":
        d = p["downtime_ms"]
        out.update(target_downtime_ms=TARGET_DOWNTIME_MS, max_downtime_ms=MAX_DOWNTIME_MS,
                   downtime_runs=d["n"] if d else 0,
                   downtime_pass=bool(d) and d["median"] <= TARGET_DOWNTIME_MS
                   and d["max"] <= MAX_DOWNTIME_MS and d["n"] >= MIN_DOWNTIME_RUNS)
    out["pass"] = out["ratio_pass"] and out.get("downtime_pass", True)
    return out


def _row(label: str, s: dict | None, unit: str, fmt: str, w: int) -> str:
    if s is None:
        return f"  {label:<{w - 2}}{'-':>9}"
    return (f"  {label:<{w - 2}}{format(s['median'], fmt):>9}{format(s['min'], fmt):>9}"
            f"{format(s['max'], fmt):>9} {unit}")


def format_table(result: dict) -> str:
    """The plain-text report printed to stdout and pasted in the README."""
    cfg = result["config"]
    w = 44
    runs = ", ".join(f"{k} {v}" for k, v in cfg["runs"].items())
    lines = [f"live migration ({cfg['accel'].upper()}, TLS, two netns over veth; runs: {runs})",
             " " * w + f"{'median':>9}{'min':>9}{'max':>9}"]
    for key in result["cases"]:
        size, workload = key.split("-")
        summ, cmp = result["summary"][key], result["compare"][key]
        p, r = summ["pyxen"], summ["raw"]
        lines.append(f"{size} MiB guest, {workload}")
        lines.append(_row("raw qemu: total-time", r["total_s"], "s", ".2f", w))
        lines.append(_row("raw qemu: target start + migrate", r.get("with_start_s"), "s", ".2f", w))
        lines.append(_row("raw qemu: downtime (QEMU's)", r["qemu_downtime_ms"], "ms", ".0f", w))
        lines.append(_row("raw qemu: downtime (STOP->RESUME)", r["downtime_ms"], "ms", ".0f", w))
        lines.append(_row("raw qemu: sent", r["mib"], "MiB", ".0f", w))
        lines.append(_row("pyxen: xm migrate --live", p["wall_s"], "s", ".2f", w))
        lines.append(_row("pyxen: xend's seconds", p["xend_s"], "s", ".2f", w))
        lines.append(_row("pyxen: downtime (STOP->RESUME)", p["downtime_ms"], "ms", ".0f", w))
        lines.append(_row("pyxen: downtime (QEMU's)", p["qemu_downtime_ms"], "ms", ".0f", w))
        lines.append(_row("pyxen: sent", p["mib"], "MiB", ".0f", w))
        verdict = f"  ratio {cmp['ratio']:.2f} (xend's {cmp['xend_ratio']:.2f})" if cmp["xend_ratio"] \
            else f"  ratio {cmp['ratio']:.2f}"
        verdict += f" -> target (<= {cmp['target_ratio']}x): {'PASS' if cmp['ratio_pass'] else 'FAIL'}"
        if "downtime_pass" in cmp:
            verdict += (f"; downtime -> target (median <= {cmp['target_downtime_ms']} ms, none above "
                        f"{cmp.get('max_downtime_ms', '?')} ms, {cmp.get('downtime_runs', '?')} runs): "
                        f"{'PASS' if cmp['downtime_pass'] else 'FAIL'}")
        lines.append(verdict)
    return "\n".join(lines)


# ------------------------------------------------------------ plumbing
def sh(*argv: str, check: bool = True, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


class RawConsole(GuestConsole):
    """GuestConsole on a raw QEMU's serial socket instead of ``xm console``."""

    def __init__(self, sock_path: Path, timeout: float = 300):
        from pexpect import fdpexpect
        from pyxen.testing.guest import _Tee
        self.dom = f"raw:{sock_path.parent.name}"
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(sock_path))
        self.child = fdpexpect.fdspawn(self.sock.fileno(), timeout=timeout, maxread=65536)
        self.transcript = bytearray()
        self.child.logfile_read = _Tee(self.transcript)

    def close(self) -> None:
        self.sock.close()


class RawQemu:
    """One plain QEMU in a namespace, driven over QMP by the bench."""

    def __init__(self, bench: "Bench", cfg: DomainConfig, ns: str, incoming: str | None):
        from qemu.qmp.legacy import QEMUMonitorProtocol
        self.run_dir = Path(tempfile.mkdtemp(prefix="raw", dir=bench.root))
        rt = qargv.Runtime(domid=0, run_dir=self.run_dir, console_log=self.run_dir / "c.log",
                           accel=ACCEL, kernel=bench.kernel, incoming=incoming)
        argv = qargv.build(cfg, rt)
        # No -S: the source boots at once, the target runs as soon as the
        # stream is in (QEMU's autostart) -- raw QEMU's best case.
        self.argv = [a for a in argv if a != "-S"]
        self.console_sock = rt.console_sock
        subprocess.run(["ip", "netns", "exec", ns, *self.argv], check=True, capture_output=True, timeout=60)
        self.pid = int(rt.pidfile.read_text())
        bench.raw_pids.add(self.pid)
        self.bench = bench
        self.qmp = QEMUMonitorProtocol(str(rt.qmp_sock))
        self.qmp.connect()
        self.events: list[dict] = []
        self.cmd("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True}, {"capability": "auto-converge", "state": True}]})
        self.cmd("migrate-set-parameters", {"downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": UNLIMITED})

    def cmd(self, name: str, args: dict | None = None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        res = self.qmp.cmd_obj(msg)
        if "error" in res:
            raise RuntimeError(f"QMP {name}: {res['error'].get('desc')}")
        return res.get("return")

    def wait_event(self, name: str, pred=lambda ev: True, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.qmp.get_events(wait=False):
                self.events.append(ev)
            self.qmp.clear_events()
            for i, ev in enumerate(self.events):
                if ev.get("event") == name and pred(ev):
                    del self.events[i]
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"raw QEMU: no {name} event in {timeout:.0f} s")
            try:
                ev = self.qmp.pull_event(wait=min(left, 1.0))
            except TimeoutError:      # (the legacy client raises rather than returning None)
                ev = None
            if ev:
                self.events.append(ev)

    def forget_events(self) -> None:
        """Drop the events seen so far (an arrived QEMU has its incoming
        side's MIGRATION and RESUME events queued)."""
        self.cmd("query-status")        # the legacy client reads pending events only during a call
        self.qmp.get_events(wait=False)
        self.qmp.clear_events()
        self.events.clear()

    def close(self) -> None:
        try:
            self.cmd("quit")
        except Exception:
            pass
        try:
            self.qmp.close()
        except Exception:
            pass
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{self.pid}") and time.monotonic() < deadline:
            time.sleep(0.01)
        if os.path.exists(f"/proc/{self.pid}"):
            os.kill(self.pid, signal.SIGKILL)
        self.bench.raw_pids.discard(self.pid)


def _ts(ev: dict) -> float:
    t = ev["timestamp"]
    return t["seconds"] + t["microseconds"] / 1e6


class Host:
    """One xend on its own root, in its own namespace."""

    def __init__(self, root: Path, ns: str, ip: str):
        self.root, self.ns, self.ip = root, ns, ip
        self.env = dict(os.environ, PYXEN_ROOT=str(root))
        (root / "etc/xen").mkdir(parents=True)
        (root / "etc/xen/xend-config.sxp").write_text(
            f"(accel {ACCEL})\n(xend-relocation-server yes)\n(xend-relocation-address '{ip}')\n")
        self.up = False

    def run(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return sh(*argv, env=self.env, timeout=timeout)

    def start(self) -> None:
        self.run("ip", "netns", "exec", self.ns, "xend", "start")
        self.up = True

    def stop(self) -> None:
        if self.up:
            for line in subprocess.run(["xm", "list"], env=self.env, capture_output=True,
                                       text=True).stdout.splitlines()[1:]:
                name = line.split()[0] if line.split() else ""
                if name and name != "Domain-0":
                    subprocess.run(["xm", "destroy", name], env=self.env, capture_output=True)
            subprocess.run(["xend", "stop"], env=self.env, capture_output=True)
            self.up = False
        kill_qemus_under(self.root)


class EventWatch:
    """Follows a source xend's event stream for the ``migrated`` result."""

    def __init__(self, host: Host, dom: str):
        from pyxen.xm.client import Client
        self.client = Client(Paths.from_env(host.env), timeout=None)
        self.dom = dom
        self.result: dict | None = None
        self.opened = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()
        if not self.opened.wait(10):
            raise RuntimeError("xend's event stream did not open")

    def _follow(self) -> None:
        try:
            for event, data in self.client.stream("/api/events", on_open=self.opened.set):
                if event == "migrated" and isinstance(data, dict) and data.get("name") == self.dom:
                    self.result = data.get("result")
                    return
        except Exception:
            pass
        finally:
            self.opened.set()
            self.done.set()

    def wait(self, timeout: float = 10) -> dict | None:
        self.done.wait(timeout)
        return self.result


class Bench(Harness):
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="pxm", dir="/tmp"))   # short: socket paths
        tag = uuid.uuid4().hex[:6]
        self.ns = (f"pxmba{tag}", f"pxmbb{tag}")
        self.spaces: list[str] = []
        self.image = Paths.from_env().default_image
        self.kernel = boot_kernel(str(self.image / "vmlinuz"), Paths.from_env().images / "cache")
        self.qemu = qargv.Runtime.qemu
        self.hosts: list[Host] = []
        self.raw_pids: set[int] = set()

    def start(self) -> None:
        for ns in self.ns:
            sh("ip", "netns", "add", ns)
            self.spaces.append(ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "eth0", "netns", self.ns[0], "type", "veth",
           "peer", "name", "eth0", "netns", self.ns[1])
        for ns, ip in zip(self.ns, (A_IP, B_IP)):
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        a = self.make_host(0, self.root / "a", self.ns[0], A_IP)
        b = self.make_host(1, self.root / "b", self.ns[1], B_IP)
        self.hosts = [a, b]
        a.run("pyxen", "ca")
        a.run("pyxen", "cert", "hosta", "--ip", A_IP)
        a.run("pyxen", "cert", "hostb", "--ip", B_IP, "--out", str(b.root / "etc/xen/pki"))
        a.start()
        b.start()

    def make_host(self, i: int, root: Path, ns: str, ip: str) -> Host:
        return Host(root, ns, ip)       # (bench/migratestorage.py: B in its own mount namespace)

    def close(self) -> None:
        for h in self.hosts:
            h.stop()
        for pid in list(self.raw_pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for ns in self.spaces:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def config(self, name: str, size: int) -> tuple[Path, DomainConfig]:
        values = {"name": name, "kernel": str(self.image / "vmlinuz"),
                  "ramdisk": str(self.image / "initrd.img"), "memory": size}
        path = self.hosts[0].root / "etc/xen" / name
        path.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))
        return path, DomainConfig.from_values(values)

    # ---------------------------------------------------------------- guests
    @staticmethod
    def prepare_guest(con: GuestConsole, workload: str) -> None:
        con.login(timeout=300)
        if workload == "dirty":
            _, rc = con.run(DIRTY_SETUP % {"mib": DIRTY_MIB, "tmpfs": 2 * DIRTY_MIB + 8}, timeout=300)
            if rc == 0:
                _, rc = con.run(DIRTY_LOOP)
            if rc != 0:
                raise GuestError(f"starting the dirtying loop failed:\n{con.tail()}")

    def pyxen_case(self, size: int, workload: str, runs: int, progress) -> list[dict]:
        name = f"mig{size}{workload[0]}"
        cfgfile, _ = self.config(name, size)
        a, b = self.hosts
        a.run("xm", "create", str(cfgfile))
        con = GuestConsole(name, env=a.env, timeout=300)
        try:
            self.prepare_guest(con, workload)
        finally:
            con.close()
        out = []
        here, there = a, b
        try:
            for i in range(runs):
                time.sleep(SETTLE_S)
                watch = EventWatch(here, name)
                t0 = time.monotonic()
                here.run("xm", "migrate", "--live", name, there.ip)
                wall = time.monotonic() - t0
                res = watch.wait() or {}
                sample = {"wall_s": round(wall, 4), "direction": f"{here.ip}->{there.ip}",
                          **{k: res.get(k) for k in ("seconds", "bytes", "downtime_ms", "qemu_downtime_ms",
                                                       "qemu_total_ms", "passes")}}
                out.append(sample)
                progress(f"{size} MiB {workload} pyxen run {i + 1}/{runs}: xm {wall:.2f} s, xend "
                         f"{sample['seconds']} s, downtime {sample['downtime_ms']} ms "
                         f"(QEMU {sample['qemu_downtime_ms']} ms), {(sample['bytes'] or 0) / MIB:.0f} MiB")
                here, there = there, here
        finally:
            subprocess.run(["xm", "destroy", name], env=here.env, capture_output=True)
        return out

    def raw_case(self, size: int, workload: str, runs: int, cfg: DomainConfig, progress) -> list[dict]:
        ips = dict(zip(self.ns, (A_IP, B_IP)))
        src = RawQemu(self, cfg, self.ns[0], None)
        try:
            con = RawConsole(src.console_sock)
            try:
                self.prepare_guest(con, workload)
            finally:
                con.close()
            out = []
            here, there = self.ns
            for i in range(runs):
                time.sleep(SETTLE_S)
                uri = f"tcp:{ips[there]}:{RAW_PORT}"
                t_spawn = time.monotonic()
                dst = RawQemu(self, cfg, there, uri)
                started = time.monotonic() - t_spawn
                try:
                    src.forget_events()
                    t0 = time.monotonic()
                    src.cmd("migrate", {"uri": uri})
                    # Polled, not from events: 'migrate' has set the new
                    # state when it returns, so no stale state can match.
                    deadline = time.monotonic() + 600
                    while True:
                        info = src.cmd("query-migrate")
                        if info.get("status") in ("completed", "failed", "cancelled") \
                                or time.monotonic() > deadline:
                            break
                        time.sleep(0.005)
                    wall = time.monotonic() - t0
                    # QEMU 7.2 sets 'completed' a moment before it fills in
                    # total-time and downtime (0 until then): ask again.
                    while info.get("status") == "completed" and not info.get("total-time") \
                            and time.monotonic() < deadline:
                        time.sleep(0.005)
                        info = src.cmd("query-migrate")
                    if info.get("status") != "completed":
                        raise RuntimeError(f"raw QEMU migration {info.get('status')}: {info.get('error-desc')}")
                    stop = src.wait_event("STOP", timeout=10)
                    resume = dst.wait_event("RESUME", timeout=60)
                except BaseException:
                    dst.close()
                    raise
                ram = info.get("ram") or {}
                sample = {"wall_s": round(wall, 4), "direction": f"{ips[here]}->{ips[there]}",
                          "target_start_s": round(started, 4), "total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
                          "visible_downtime_ms": round((_ts(resume) - _ts(stop)) * 1000, 1),
                          "bytes": ram.get("transferred"), "passes": ram.get("dirty-sync-count")}
                out.append(sample)
                progress(f"{size} MiB {workload} raw run {i + 1}/{runs}: total-time {sample['total_ms']} ms, "
                         f"downtime {sample['downtime_ms']} ms (STOP->RESUME {sample['visible_downtime_ms']} ms), "
                         f"{(sample['bytes'] or 0) / MIB:.0f} MiB")
                src.close()
                src = dst
                here, there = there, here
        finally:
            src.close()
        return out


# ------------------------------------------------------------ the run
def run(runs: dict | None = None, sizes=SIZES, workloads=WORKLOADS, progress=print) -> dict:
    runs = dict(DEFAULT_RUNS, **(runs or {}))
    samples: dict = {}
    with Bench() as b:
        host = host_info(b)
        host["loadavg_1min"] = round(os.getloadavg()[0], 2)  # other work on the host skews TCG timings
        n = 0
        for size in sizes:
            for workload in workloads:
                key = f"{size}-{workload}"
                _, cfg = b.config(f"raw{size}", size)
                # Which side goes first alternates between cases (host drift).
                first_raw = n % 2 == 1
                n += 1
                got = {}
                for side in (("raw", "pyxen") if first_raw else ("pyxen", "raw")):
                    if side == "pyxen":
                        got["pyxen"] = b.pyxen_case(size, workload, runs[workload], progress)
                    else:
                        got["raw"] = b.raw_case(size, workload, runs[workload], cfg, progress)
                samples[key] = got
        summary = {k: summarize(v["pyxen"], v["raw"]) for k, v in samples.items()}
        return {
            "benchmark": "migrate",
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": host,
            "config": {"runs": runs, "sizes": list(sizes), "workloads": list(workloads), "accel": ACCEL,
                       "tls": True, "link": "veth between two network namespaces",
                       "downtime_limit_ms": DOWNTIME_LIMIT_MS, "dirty_mib_per_s": DIRTY_MIB,
                       "dirty_script": DIRTY_SCRIPT % {"mib": DIRTY_MIB, "tmpfs": 2 * DIRTY_MIB + 8},
                       "settle_s": SETTLE_S},
            "cases": list(samples),
            "samples": samples,
            "summary": summary,
            "compare": {k: compare(s, k.split("-")[1]) for k, s in summary.items()},
        }
