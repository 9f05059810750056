"""Save/restore benchmark: how fast ``xm save`` and ``xm restore`` move a
guest's state to and from disk, against plain QEMU saving and loading the
same guest, and ``dd`` moving the same number of bytes to and from the
same disk, all in the same run.

For each guest size (256 MiB and 1 GiB by default) one guest is booted
under one xend (TCG) and most of its free memory is filled with non-zero
data, so its saved state is about as large as the guest.  Then, after one
untimed warm-up round, each round times (wall clock, from spawn to exit):

* ``xm save`` into a directory on the disk under test, and ``dd`` writing
  as many bytes of zeros there with ``conv=fsync`` (``xm save`` fsyncs
  too); which of the two goes first alternates between rounds;
* ``xm restore`` of that file and ``dd`` reading it, both with the file
  evicted from the page cache first (``posix_fadvise(DONTNEED)`` on that
  file only), as a restore after a host reboot would find it;
* plain QEMU doing the same without pyxen: QEMU started from pyxen's own
  argv for the config with ``-incoming defer`` loads the file's stream,
  then migrates out to a new file that is then fsynced.  This is what QEMU
  alone manages, without header, checksum, or toolstack.

Throughput is the save file's size over the time taken.  The target
(issue 17): pyxen's median save and restore throughput at least 0.9 of
raw QEMU's.  pyxen / dd is reported too, for information.

The pure parts (``summarize``, ``compare``, ``format_table``) are
unit-tested without booting anything.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
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
from pyxen.testing.guest import GuestConsole
from pyxen.xend import checkpoint

from .boot import host_info
from .harness import Harness, kill_qemus_under

SIZES = (256, 1024)          # MiB of guest memory
ACCEL = "tcg"
TARGET = 0.9                 # pyxen throughput / raw QEMU's, for save and for restore (issue 17)
FILL_SHARE = 0.8             # of the guest's MemAvailable filled with data
SIDES = ("save", "dd_write", "raw_save", "restore", "dd_read", "raw_load")
LABELS = {"save": "xm save", "dd_write": "dd write (conv=fsync)",
          "raw_save": "raw QEMU: migrate to file + fsync",
          "restore": "xm restore (file not cached)", "dd_read": "dd read (file not cached)",
          "raw_load": "raw QEMU: start + load from file"}
MB = 1e6


# ------------------------------------------------------------ pure parts
def summarize(samples: list[tuple[int, float]]) -> dict:
    """Throughput (MB/s) of (bytes, seconds) samples: median, min, max."""
    if not samples:
        raise ValueError("no samples")
    rates = [b / s / MB for b, s in samples]
    return {"median": round(statistics.median(rates), 1), "min": round(min(rates), 1),
            "max": round(max(rates), 1), "n": len(rates),
            "seconds_median": round(statistics.median(s for _, s in samples), 3)}


def compare(summary: dict) -> dict:
    """pyxen / raw QEMU throughput for save and restore (the verdict), and
    pyxen / dd (for information: what the disk itself takes)."""
    # Rounded before the verdict, so it agrees with the figures shown.
    save = round(summary["save"]["median"] / summary["raw_save"]["median"], 3)
    restore = round(summary["restore"]["median"] / summary["raw_load"]["median"], 3)
    dd_save = summary["save"]["median"] / summary["dd_write"]["median"]
    dd_restore = summary["restore"]["median"] / summary["dd_read"]["median"]
    return {"save_ratio": save, "restore_ratio": restore, "target": TARGET,
            "pass": save >= TARGET and restore >= TARGET,
            "dd_save_ratio": round(dd_save, 3), "dd_restore_ratio": round(dd_restore, 3)}


def format_table(result: dict) -> str:
    """The plain-text report printed to stdout and pasted in the README."""
    cfg = result["config"]
    w = max(len(LABELS[s]) for s in SIDES) + 4
    lines = [f"save/restore ({cfg['accel'].upper()}, {cfg['runs']} runs; "
             "MB/s = save file bytes / wall time)",
             " " * w + f"{'MB/s':>8}{'min':>8}{'max':>8}{'time':>9}"]
    for size in cfg["sizes"]:
        key = str(size)
        summ, cmp = result["summary"][key], result["compare"][key]
        lines.append(f"{size} MiB guest, {result['bytes'][key] / MB:.0f} MB save file")
        for side in SIDES:
            s = summ[side]
            lines.append(f"  {LABELS[side]:<{w - 2}}{s['median']:>8.0f}{s['min']:>8.0f}{s['max']:>8.0f}"
                         f"{s['seconds_median']:>7.2f} s")
        lines.append(f"  vs raw QEMU: save ratio {cmp['save_ratio']:.2f}, restore ratio "
                     f"{cmp['restore_ratio']:.2f}  -> target (>= {TARGET}): {'PASS' if cmp['pass'] else 'FAIL'}")
        lines.append(f"  vs dd (for information): save {cmp['dd_save_ratio']:.2f}, "
                     f"restore {cmp['dd_restore_ratio']:.2f}")
    return "\n".join(lines)


# ------------------------------------------------------------ measuring
def evict(path: Path) -> None:
    """Drop *path* (only) from the page cache; it must be clean (fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(argv: list[str], env: dict | None = None) -> float:
    t0 = time.monotonic()
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    dt = time.monotonic() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip() or res.stdout.strip()}")
    return dt


class RawQemu:
    """Plain QEMU loading a save file's stream and migrating out again,
    driven over QMP by this process: the no-toolstack ceiling."""

    def __init__(self, bench: "Bench", cfg: DomainConfig, info: checkpoint.SaveInfo):
        from qemu.qmp.legacy import QEMUMonitorProtocol
        self.run_dir = bench.root / "raw"
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir()
        rt = qargv.Runtime(domid=0, run_dir=self.run_dir, console_log=self.run_dir / "c.log",
                           accel=ACCEL, kernel=bench.kernel, incoming="defer",
                           machine=str(info.meta.get("machine") or "pc"))
        self.argv = qargv.build(cfg, rt)
        self.pidfile = rt.pidfile
        self.pid = None
        self.info = info
        self._qmp_cls, self.qmp_path = QEMUMonitorProtocol, str(rt.qmp_sock)
        self.qmp = None

    def _cmd(self, name: str, args: dict | None = None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        res = self.qmp.cmd_obj(msg)
        if "error" in res:
            raise RuntimeError(f"QMP {name}: {res['error'].get('desc')}")
        return res.get("return")

    def _wait_migration(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.qmp.pull_event(wait=max(0.1, deadline - time.monotonic()))
            if ev and ev.get("event") == "MIGRATION":
                status = ev["data"]["status"]
                if status == "completed":
                    return
                if status in ("failed", "cancelled"):
                    raise RuntimeError(f"raw QEMU migration {status}")
            if time.monotonic() > deadline:
                raise TimeoutError("raw QEMU migration did not finish")

    def load(self) -> float:
        """Seconds from spawning QEMU to the loaded state."""
        t0 = time.monotonic()
        subprocess.run(self.argv, check=True, capture_output=True, timeout=60)
        self.pid = int(self.pidfile.read_text())
        self.qmp = self._qmp_cls(self.qmp_path)
        self.qmp.connect()
        self._cmd("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
        fd = os.open(self.info.path, os.O_RDONLY)
        try:
            os.lseek(fd, self.info.stream_offset, os.SEEK_SET)
            self.qmp.send_fd_scm(fd)
            self._cmd("getfd", {"fdname": "in"})
        finally:
            os.close(fd)
        self._cmd("migrate-incoming", {"uri": "fd:in"})
        self._wait_migration()
        return time.monotonic() - t0

    def save(self, path: Path) -> tuple[int, float]:
        """(bytes, seconds) of a migration into a new file, fsync included."""
        self._cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        t0 = time.monotonic()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self.qmp.send_fd_scm(fd)
            self._cmd("getfd", {"fdname": "out"})
            self._cmd("migrate", {"uri": "fd:out"})
            self._wait_migration()
            os.fsync(fd)
        finally:
            os.close(fd)
        return os.path.getsize(path), time.monotonic() - t0

    def close(self) -> None:
        if self.qmp is not None:
            try:
                self._cmd("quit")
            except Exception:
                pass
            try:
                self.qmp.close()
            except Exception:       # EOF: QEMU is gone already, as asked
                pass
            self.qmp = None
        if self.pid:
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{self.pid}") and time.monotonic() < deadline:
                time.sleep(0.01)
            if os.path.exists(f"/proc/{self.pid}"):
                os.kill(self.pid, signal.SIGKILL)
            self.pid = None


class Bench(Harness):
    """One xend on a fresh root; save files go to <root>/save (on /tmp's disk)."""

    def __init__(self, save_dir: Path | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="pxr", dir="/tmp"))  # short: socket paths
        self.env = dict(os.environ, PYXEN_ROOT=str(self.root))
        self.dir = save_dir or self.root / "save"
        self.image = Paths.from_env().default_image
        self.kernel = boot_kernel(str(self.image / "vmlinuz"), Paths.from_env().images / "cache")
        self.qemu = qargv.Runtime.qemu
        self.live: set[str] = set()
        self.raw: RawQemu | None = None
        self.xend_up = False

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        res = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip() or res.stdout.strip()}")
        return res

    def start(self) -> None:
        (self.root / "etc/xen").mkdir(parents=True)
        (self.root / "etc/xen/xend-config.sxp").write_text(f"(accel {ACCEL})\n")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._run("xend", "start")
        self.xend_up = True

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
        for name in list(self.live):
            subprocess.run(["xm", "destroy", name], env=self.env, capture_output=True)
        if self.xend_up:
            subprocess.run(["xend", "stop"], env=self.env, capture_output=True)
        kill_qemus_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    # ---------------------------------------------------------------- guest
    def config(self, size: int) -> tuple[str, Path, DomainConfig]:
        name = f"sr{size}"
        values = {"name": name, "kernel": str(self.image / "vmlinuz"),
                  "ramdisk": str(self.image / "initrd.img"), "memory": size}
        path = self.root / "etc/xen" / name
        path.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))
        return name, path, DomainConfig.from_values(values)

    def boot_and_fill(self, name: str, cfgfile: Path) -> int:
        """Boot the guest and fill most of its free memory; MiB filled."""
        self._run("xm", "create", str(cfgfile))
        self.live.add(name)
        con = GuestConsole(name, env=self.env, timeout=300)
        try:
            con.login()
            out, rc = con.run("awk '/MemAvailable/ {print int($2 / 1024 * %s)}' /proc/meminfo" % FILL_SHARE)
            mib = int(out.strip())
            script = ("mkdir -p /mnt/fill && mount -t tmpfs -o size=95% tmpfs /mnt/fill && "
                      "dd if=/dev/urandom of=/mnt/fill/seed bs=1M count=1 2>/dev/null && "
                      f"i=0; while [ $i -lt {mib} ]; do cat /mnt/fill/seed; i=$((i+1)); done "
                      "> /mnt/fill/data")
            _, rc = con.run(script, timeout=600)
            if rc != 0:
                raise RuntimeError(f"filling {name}'s memory failed:\n{con.tail()}")
        finally:
            con.close()
        return mib

    # ---------------------------------------------------------------- sides
    def pyxen_save(self, name: str, target: Path) -> tuple[int, float]:
        target.unlink(missing_ok=True)    # like dd, a new file (replacing one frees its blocks first)
        os.sync()
        dt = timed(["xm", "save", name, str(target)], self.env)
        self.live.discard(name)
        return target.stat().st_size, dt

    def dd_write(self, nbytes: int) -> tuple[int, float]:
        out = self.dir / "dd.out"
        out.unlink(missing_ok=True)
        os.sync()
        count = math.ceil(nbytes / (1 << 20))
        dt = timed(["dd", "if=/dev/zero", f"of={out}", "bs=1M", f"count={count}", "conv=fsync"])
        size = out.stat().st_size
        out.unlink()
        return size, dt

    def pyxen_restore(self, name: str, target: Path) -> tuple[int, float]:
        evict(target)
        dt = timed(["xm", "restore", str(target)], self.env)
        self.live.add(name)
        return target.stat().st_size, dt

    def dd_read(self, target: Path) -> tuple[int, float]:
        evict(target)
        dt = timed(["dd", f"if={target}", "of=/dev/null", "bs=1M"])
        return target.stat().st_size, dt

    def raw_round(self, cfg: DomainConfig, target: Path) -> tuple[tuple[int, float], tuple[int, float]]:
        info = checkpoint.read_header(str(target))
        evict(target)
        self.raw = RawQemu(self, cfg, info)
        try:
            load = (target.stat().st_size, self.raw.load())
            out = self.dir / "raw.out"
            out.unlink(missing_ok=True)
            os.sync()
            save = self.raw.save(out)
            out.unlink()
        finally:
            self.raw.close()
            self.raw = None
        return load, save


# ------------------------------------------------------------ the run
def run(runs: int = 3, sizes=SIZES, progress=print, save_dir: Path | None = None) -> dict:
    samples: dict = {str(s): {side: [] for side in SIDES} for s in sizes}
    nbytes: dict = {}
    fill: dict = {}
    with Bench(save_dir) as b:
        host = host_info(b)
        host["loadavg_1min"] = round(os.getloadavg()[0], 2)  # other work on the host skews timings
        df = subprocess.run(["df", "--output=source,fstype", str(b.dir)], capture_output=True,
                            text=True).stdout.split()
        for size in sizes:
            key = str(size)
            name, cfgfile, cfg = b.config(size)
            fill[key] = b.boot_and_fill(name, cfgfile)
            target = b.dir / f"{name}.chk"
            for i in range(runs + 1):
                got = {}
                order = ("save", "dd_write") if i % 2 == 0 else ("dd_write", "save")
                for side in order:
                    if side == "save":
                        got["save"] = b.pyxen_save(name, target)
                    else:
                        # as many bytes as the last save file (the first time: the guest's size)
                        got["dd_write"] = b.dd_write(nbytes.get(key) or size << 20)
                nbytes[key] = got["save"][0]
                got["restore"] = b.pyxen_restore(name, target)
                got["dd_read"] = b.dd_read(target)
                got["raw_load"], got["raw_save"] = b.raw_round(cfg, target)
                msg = ", ".join(f"{s} {got[s][1]:.2f} s" for s in SIDES)
                if i == 0:
                    progress(f"{size} MiB warm-up: {msg}")
                    continue
                for side in SIDES:
                    samples[key][side].append((got[side][0], round(got[side][1], 4)))
                progress(f"{size} MiB run {i}/{runs}: {msg}")
            b._run("xm", "destroy", name)
            b.live.discard(name)
        summary = {k: {side: summarize(v) for side, v in s.items()} for k, s in samples.items()}
        return {
            "benchmark": "saverestore",
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": host,
            "config": {"runs": runs, "sizes": list(sizes), "accel": ACCEL, "fill_share": FILL_SHARE,
                       "filled_mib": fill, "dir": str(b.dir),
                       "filesystem": {"source": df[2] if len(df) > 2 else "",
                                      "fstype": df[3] if len(df) > 3 else ""},
                       "checksum": checkpoint.ALGORITHM},
            "bytes": nbytes,
            "samples": samples,
            "summary": summary,
            "compare": {k: compare(s) for k, s in summary.items()},
        }
