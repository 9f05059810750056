"""Boot benchmark: how long `xm create` takes to bring a guest to its init,
against plain QEMU booting the very same thing.

Three sides, each timed from just before its process is spawned to the
moment the guest's init prints ``pyxen-init: started`` on the serial
console (the console log file is polled every 2 ms, identically for all):

* ``pyxen``: ``xm create <cfg>`` against one xend (TCG) on a throw-away
  ``PYXEN_ROOT``; the guest is then removed with ``xm destroy``.  How long
  ``xm create`` itself took to return is recorded too.
* ``raw``: ``qemu-system-x86_64`` with the options pyxen's own argv builder
  produces for that config (machine, memory, accelerator, -smp, the cached
  PVH vmlinux pyxen boots, initrd, kernel command line) and nothing else.
* ``naive`` (for information): QEMU with its defaults booting the bzImage
  with only ``console=ttyS0``: what the kernel cache and tuned command line
  buy.

The pure parts (``summarize``, ``compare``, ``format_table``) are unit-tested
without booting anything.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from pyxen.config.domain import DomainConfig
from pyxen.hypervisor.qemu import argv as qargv
from pyxen.hypervisor.qemu.kcache import boot_kernel
from pyxen.paths import Paths

from .harness import Harness, kill_qemus_under

MARKER = b"pyxen-init: started"
POLL = 0.002          # seconds between looks at a console log
BOOT_TIMEOUT = 120.0  # seconds before a boot counts as failed
MEMORY = 128
VCPUS = 1
ACCEL = "tcg"
SIDES = ("raw", "pyxen", "naive")
RATIO_TARGET = 1.10   # issue 17: pyxen / raw, on a quiet host and beside a busy guest
BUSY_SETTLE = 60.0    # seconds allowed for the busy guest to reach its loop
LABELS = {"raw": "raw qemu (same kernel, cmdline)",
          "pyxen": "pyxen: xm create -> init",
          "pyxen_create": "  of which xm create returned",
          "naive": "naive raw qemu (bzImage, defaults)",
          "xend_cpu": "  xend CPU during the boot"}


# ------------------------------------------------------------ pure parts
def summarize(samples: list[float]) -> dict:
    """Median, min and max of a list of seconds."""
    if not samples:
        raise ValueError("no samples")
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples)}


def compare(raw_median: float, pyxen_median: float) -> dict:
    """pyxen's overhead over raw QEMU and the verdicts: ``pass`` if the
    overhead is below max(10 % of raw, 150 ms); ``ratio_pass`` if pyxen / raw
    is at most RATIO_TARGET (issue 17's target, for both variants)."""
    overhead_ms = (pyxen_median - raw_median) * 1000
    budget_ms = max(0.10 * raw_median * 1000, 150.0)
    ratio = round(pyxen_median / raw_median, 3)
    return {"overhead_ms": round(overhead_ms, 1), "ratio": ratio,
            "budget_ms": round(budget_ms, 1), "pass": overhead_ms < budget_ms,
            "ratio_target": RATIO_TARGET, "ratio_pass": ratio <= RATIO_TARGET}


def _verdict(cmp: dict) -> str:
    line = (f"overhead {cmp['overhead_ms']:.0f} ms, ratio {cmp['ratio']:.2f}  -> target "
            f"(< max(10%, 150 ms) = {cmp['budget_ms']:.0f} ms): {'PASS' if cmp['pass'] else 'FAIL'}")
    if "ratio_pass" in cmp:
        line += f"; ratio <= {cmp['ratio_target']:.2f}: {'PASS' if cmp['ratio_pass'] else 'FAIL'}"
    return line


def format_table(result: dict) -> str:
    """The plain-text report printed to stdout and pasted in the README."""
    cfg, summ, cmp = result["config"], result["summary"], result["compare"]
    head = (f"boot to init ({cfg['accel'].upper()}, {cfg['memory']} MiB, {cfg['vcpus']} vCPU, "
            f"{cfg['runs']} runs)")
    loaded = result.get("loaded")
    keys = list(summ) + (list(loaded["summary"]) if loaded else [])
    w = max(len(head), *(len(LABELS[k]) for k in keys)) + 2
    lines = [f"{head:<{w}}{'median':>8}{'min':>8}{'max':>8}"]

    def rows(summary):
        for key in ("raw", "pyxen", "pyxen_create", "xend_cpu", "naive"):
            if key in summary:
                s = summary[key]
                lines.append(f"{LABELS[key]:<{w}}{s['median']:>6.2f} s{s['min']:>8.2f}{s['max']:>8.2f}")
    rows(summ)
    lines.append(_verdict(cmp))
    if loaded:
        lines.append(f"beside one busy 1-vCPU guest ({loaded['busy_cpu_percent']:.0f} % of a core; "
                     f"load {loaded['loadavg_1min']})")
        rows(loaded["summary"])
        lines.append(_verdict(loaded["compare"]))
    return "\n".join(lines)


def raw_argv(pyxen_argv: list[str]) -> list[str]:
    """Plain QEMU from pyxen's argv: keep what shapes the guest and its boot
    (binary, machine, memory, accelerator, vCPUs, kernel, initrd, command
    line); drop the toolstack's plumbing (QMP, console socket, -S,
    -daemonize, ...).  The caller adds ``-serial``."""
    keep = ("-machine", "-m", "-accel", "-smp", "-kernel", "-initrd", "-append")
    out = [pyxen_argv[0]]
    for i, a in enumerate(pyxen_argv[:-1]):
        if a in keep:
            out += [a, pyxen_argv[i + 1]]
    return out + ["-nodefaults", "-no-user-config", "-display", "none"]


# ------------------------------------------------------------ measuring
class Marker:
    """Finds MARKER in a growing file that may not exist yet."""

    def __init__(self, path: Path):
        self.path, self.f, self.tail = path, None, b""

    def seen(self) -> bool:
        if self.f is None:
            try:
                self.f = open(self.path, "rb")
            except FileNotFoundError:
                return False
        data = self.f.read()
        if not data:
            return False
        buf = self.tail + data
        self.tail = buf[-len(MARKER):]
        return MARKER in buf

    def close(self) -> None:
        if self.f:
            self.f.close()


def wait_marker(path: Path, proc: subprocess.Popen | None = None,
                may_exit: bool = False) -> tuple[float, float | None]:
    """Poll *path* until MARKER shows; return (time seen, time *proc* exited
    or None), both time.monotonic().  *proc* exiting is an error unless
    *may_exit* (``xm create`` returns before the guest is up) and it exits 0."""
    m, exited = Marker(path), None
    deadline = time.monotonic() + BOOT_TIMEOUT
    try:
        while True:
            if m.seen():
                return time.monotonic(), exited
            now = time.monotonic()
            if proc is not None and exited is None and proc.poll() is not None:
                exited = now
                if proc.returncode != 0 or not may_exit:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}: {err.strip()}")
            if now > deadline:
                raise TimeoutError(f"no {MARKER.decode()!r} in {path} within {BOOT_TIMEOUT:.0f} s")
            time.sleep(POLL)
    finally:
        m.close()


class Bench(Harness):
    """One xend on a fresh root, the image, and the argv of every side."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="pxb", dir="/tmp"))  # short: socket paths
        self.env = dict(os.environ, PYXEN_ROOT=str(self.root))
        self.image = Paths.from_env().default_image
        self.xm = shutil.which("xm") or "xm"
        self.live: set[str] = set()            # pyxen domains not yet destroyed
        self.procs: list[subprocess.Popen] = []  # raw QEMUs not yet reaped
        self.xend_up = False
        self.n = 0
        self.last_xend_cpu = 0.0
        vmlinuz, initrd = self.image / "vmlinuz", self.image / "initrd.img"
        cfg = DomainConfig.from_values({"name": "bench", "kernel": str(vmlinuz),
                                        "ramdisk": str(initrd), "memory": MEMORY, "vcpus": VCPUS})
        # The same lookup xend does, so raw QEMU boots the file pyxen boots.
        self.kernel = boot_kernel(str(vmlinuz), Paths.from_env().images / "cache")
        rt = qargv.Runtime(domid=0, run_dir=self.root, console_log=self.root / "c.log",
                           accel=ACCEL, kernel=self.kernel)
        self.pyxen_argv = qargv.build(cfg, rt)
        self.qemu = self.pyxen_argv[0]
        self.naive = [self.qemu, "-m", str(MEMORY), "-display", "none",
                      "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", "console=ttyS0"]

    # ---------------------------------------------------------- lifecycle
    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        res = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip() or res.stdout.strip()}")
        return res

    def start(self) -> None:
        (self.root / "etc/xen").mkdir(parents=True)
        (self.root / "etc/xen/xend-config.sxp").write_text(f"(accel {ACCEL})\n")
        self._run("xend", "start")
        self.xend_up = True

    def close(self) -> None:
        """Destroy what is left, stop xend, kill stray QEMUs, remove the root."""
        for name in list(self.live):
            subprocess.run([self.xm, "destroy", name], env=self.env, capture_output=True)
        for p in self.procs:
            p.kill()
            p.wait()
        if self.xend_up:
            subprocess.run(["xend", "stop"], env=self.env, capture_output=True)
        kill_qemus_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    # ---------------------------------------------------------- one boot each
    def boot_pyxen(self) -> tuple[float, float]:
        """(seconds to init, seconds for xm create to return)."""
        self.n += 1
        name = f"b{self.n}"
        cfgfile = self.root / "etc/xen" / name
        cfgfile.write_text(f'kernel = "{self.image / "vmlinuz"}"\nramdisk = "{self.image / "initrd.img"}"\n'
                           f'memory = {MEMORY}\nvcpus = {VCPUS}\nname = "{name}"\n')
        log = self.root / f"var/log/xen/console/guest-{name}.log"
        self.live.add(name)
        ticks0 = self.xend_ticks()
        t0 = time.monotonic()
        proc = subprocess.Popen([self.xm, "create", str(cfgfile)], env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            seen, exited = wait_marker(log, proc, may_exit=True)
            self.last_xend_cpu = (self.xend_ticks() - ticks0) / os.sysconf("SC_CLK_TCK")
            if exited is None:
                proc.wait()
                exited = time.monotonic()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stderr.close()
        self._run(self.xm, "destroy", name)
        self.live.discard(name)
        return seen - t0, exited - t0

    def _boot_qemu(self, argv: list[str]) -> float:
        self.n += 1
        serial = self.root / f"raw{self.n}.log"
        t0 = time.monotonic()
        proc = subprocess.Popen(argv + ["-serial", f"file:{serial}"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        try:
            seen, _ = wait_marker(serial, proc)
        finally:
            proc.kill()
            proc.wait()
            proc.stderr.close()
            self.procs.remove(proc)
        return seen - t0

    def xend_ticks(self) -> int:
        """xend's utime + stime so far (clock ticks, all its threads)."""
        pid = int((self.root / "var/run/pyxen/xend.pid").read_text().split()[0])
        text = Path(f"/proc/{pid}/stat").read_text()
        rest = text[text.rindex(")") + 2:].split()
        return int(rest[11]) + int(rest[12])

    def boot_raw(self) -> float:
        return self._boot_qemu(raw_argv(self.pyxen_argv))

    def boot_naive(self) -> float:
        return self._boot_qemu(self.naive)


class BusyGuest:
    """A plain QEMU guest (1 vCPU, same kernel and initrd) whose init is a
    shell spinning forever: the competing load of the loaded variant."""

    def __init__(self, bench: Bench):
        argv = raw_argv(bench.pyxen_argv)
        i = argv.index("-append")
        argv[i + 1] = 'console=ttyS0 quiet rdinit=/bin/sh -- -c "while :; do :; done"'
        self.argv = argv + ["-serial", "null"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start it and wait until it keeps a core busy; its CPU share (%)."""
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + BUSY_SETTLE
        while True:
            share = self.cpu_share(1.0)
            if share >= 80.0:
                return share
            if self.proc.poll() is not None:
                raise RuntimeError(f"the busy guest exited {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the busy guest used only {share:.0f} % of a core")

    def cpu_share(self, seconds: float) -> float:
        def ticks():
            text = Path(f"/proc/{self.proc.pid}/stat").read_text()
            rest = text[text.rindex(")") + 2:].split()
            return int(rest[11]) + int(rest[12])
        t0, k0 = time.monotonic(), ticks()
        time.sleep(seconds)
        return 100.0 * (ticks() - k0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def host_info(bench: Bench) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "")
    qver = subprocess.run([bench.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()
    try:
        manifest = json.loads((bench.image / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    return {"nproc": os.cpu_count(), "cpu": cpu, "accel": ACCEL, "host_kernel": platform.release(),
            "qemu": qver[0] if qver else "", "guest_kernel": manifest.get("kernel_version", ""),
            "python": platform.python_version()}


# ------------------------------------------------------------ the run
def _rounds(b: Bench, runs: int, sides: tuple, warm_up: bool, progress, tag: str = "") -> dict:
    """*runs* timed rounds (after one untimed one if *warm_up*), swapping
    which of pyxen and raw goes first; any other side last in each round."""
    samples = {"raw": [], "pyxen": [], "pyxen_create": [], "xend_cpu": []}
    samples.update({s: [] for s in sides})
    for i in range(0 if warm_up else 1, runs + 1):
        order = ("pyxen", "raw") if i % 2 == 0 else ("raw", "pyxen")
        for side in order + tuple(s for s in sides if s not in order):
            if side == "pyxen":
                t, created = b.boot_pyxen()
            else:
                t, created = (b.boot_raw() if side == "raw" else b.boot_naive()), None
            if i == 0:
                progress(f"warm-up {side}: {t:.2f} s")
                continue
            samples[side].append(round(t, 4))
            if created is not None:
                samples["pyxen_create"].append(round(created, 4))
                samples["xend_cpu"].append(round(b.last_xend_cpu, 3))
            progress(f"{tag}run {i}/{runs} {side}: {t:.2f} s")
    return samples


def run(runs: int = 5, progress=print, loaded: bool = True) -> dict:
    """Warm up each side once, then *runs* timed boots of each, alternating
    which of pyxen and raw goes first; naive last in every round.  Then, if
    *loaded*, *runs* more rounds of pyxen and raw beside one busy guest."""
    with Bench() as b:
        host = host_info(b)
        host["loadavg_1min"] = round(os.getloadavg()[0], 2)  # other work on the host skews TCG timings
        samples = _rounds(b, runs, ("raw", "pyxen", "naive"), True, progress)
        summary = {k: summarize(v) for k, v in samples.items()}
        out_loaded = None
        if loaded:
            busy = BusyGuest(b)
            try:
                share = busy.start()
                progress(f"busy guest running ({share:.0f} % of a core)")
                load = round(os.getloadavg()[0], 2)
                lsamples = _rounds(b, runs, ("raw", "pyxen"), False, progress, "loaded ")
                share = (share + busy.cpu_share(1.0)) / 2
            finally:
                busy.close()
            lsummary = {k: summarize(v) for k, v in lsamples.items()}
            out_loaded = {"busy_argv": busy.argv, "busy_cpu_percent": round(share, 1),
                          "loadavg_1min": load, "samples": lsamples, "summary": lsummary,
                          "compare": compare(lsummary["raw"]["median"], lsummary["pyxen"]["median"])}
        result = {
            "benchmark": "boot",
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": host,
            "config": {"runs": runs, "memory": MEMORY, "vcpus": VCPUS, "accel": ACCEL,
                       "marker": MARKER.decode(), "poll_ms": POLL * 1000, "xm": b.xm,
                       "kernel": b.kernel, "cmdline": b.pyxen_argv[b.pyxen_argv.index("-append") + 1],
                       "raw_argv": raw_argv(b.pyxen_argv) + ["-serial", "file:<log>"],
                       "naive_argv": b.naive + ["-serial", "file:<log>"]},
            "samples": samples,
            "summary": summary,
            "compare": compare(summary["raw"]["median"], summary["pyxen"]["median"]),
        }
        if out_loaded:
            result["loaded"] = out_loaded
        return result
