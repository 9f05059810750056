"""Disk benchmark: guest I/O on a file-backed disk against the same I/O on the
host file, for each QEMU aio/cache setting a ``file:`` disk could use.

The guest is QEMU started from pyxen's own argv builder (machine, memory,
accelerator, kernel, initrd, command line: ``boot.raw_argv``) plus the disk
exactly as pyxen exports it (``argv.disk_nodes``/``disk_device``) with the
variant's ``aio`` and ``cache.direct`` patched in; its serial console is on
the benchmark's pty and a shell runs the tests.  The same busybox commands
run on the host against the image file:

* sequential write: ``dd`` 64 MiB of zeros, 1 MiB blocks, ``conv=fsync``;
* sequential read: ``dd`` the 64 MiB back with ``iflag=direct`` (no guest
  page cache; the host page cache is what the variant decides);
* random read: N single 4 KiB ``dd iflag=direct`` reads at random offsets.

Guest durations come from the guest's own /proc/uptime around each command
(10 ms resolution), host durations from time.monotonic().  The ratio is
guest throughput / host throughput (1.0 = as fast as the host).  Under TCG
the guest's CPU emulation dominates; the variants still differ in how the
host side of each request is served, and that is what picks the default.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from pexpect import fdpexpect

from pyxen.config.domain import DomainConfig
from pyxen.config.specs import parse_disk
from pyxen.hypervisor.qemu import argv as qargv
from pyxen.hypervisor.qemu.kcache import boot_kernel
from pyxen.paths import Paths
from pyxen.testing.guest import GuestConsole, _Tee

from . import boot

SIZE_MIB = 64
VARIANTS = (("threads", False), ("native", True), ("io_uring", False), ("io_uring", True))
SEQ_WRITE = "dd if=/dev/zero of={dev} bs=1M count={n} conv=fsync 2>/dev/null"
# Read the image READ_PASSES times: one pass is too quick for /proc/uptime's 10 ms.
READ_PASSES = 4
SEQ_READ = ("for p in $(seq {passes}); do dd if={dev} of=/dev/null bs=1M count={n} iflag=direct 2>/dev/null "
            "|| exit 1; done")
RAND_READ = ("i=0; while [ $i -lt {k} ]; do dd if={dev} of=/dev/null bs=4k count=1 "
             "skip=$((RANDOM % {blocks})) iflag=direct 2>/dev/null; i=$((i+1)); done")


def label(aio: str, direct: bool) -> str:
    return f"aio={aio},cache.direct={'on' if direct else 'off'}"


def host_run(cmd: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["busybox", "sh", "-c", cmd], check=True)
    return time.monotonic() - t0


class RawGuest(GuestConsole):
    """GuestConsole on a QEMU whose serial port is our pty (no xend)."""

    def __init__(self, argv: list[str], console: Path):
        self.dom = "bench"
        self.timeout = 120
        self.proc = subprocess.Popen(argv + ["-chardev", f"socket,id=con,path={console},server=on,wait=off",
                                             "-serial", "chardev:con"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        self.sock = socket.socket(socket.AF_UNIX)
        while True:
            try:
                self.sock.connect(str(console))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"QEMU did not start: {self.proc.stderr.read().decode()}") from None
                time.sleep(0.05)
        self.child = fdpexpect.fdspawn(self.sock.fileno(), timeout=120, maxread=65536)
        self.transcript = bytearray()
        self.child.logfile_read = _Tee(self.transcript)

    def timed(self, cmd: str) -> float:
        out, rc = self.run(f"a=$(cut -d' ' -f1 /proc/uptime); {cmd}; r=$?; "
                           f"b=$(cut -d' ' -f1 /proc/uptime); echo $a $b; exit_ok=$r; [ $r = 0 ]",
                           timeout=600)
        if rc != 0:
            raise RuntimeError(f"guest command failed: {cmd}\n{out}")
        a, b = out.split()[-2:]
        return float(b) - float(a)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.sock.close()


def guest_argv(aio: str, direct: bool, image: Path, disk: Path, tmp: Path) -> list[str]:
    paths = Paths.from_env()
    cfg = DomainConfig.from_values({"name": "bench", "kernel": str(image / "vmlinuz"),
                                    "ramdisk": str(image / "initrd.img"), "memory": boot.MEMORY,
                                    "vcpus": boot.VCPUS})
    rt = qargv.Runtime(domid=0, run_dir=tmp, console_log=tmp / "c.log", accel=boot.ACCEL,
                       kernel=str(boot_kernel(cfg.kernel, paths.images / "cache")))
    base = boot.raw_argv(qargv.build(cfg, rt))
    saved = qargv.FILE_AIO, qargv.FILE_CACHE_DIRECT
    qargv.FILE_AIO, qargv.FILE_CACHE_DIRECT = aio, direct
    try:
        d = parse_disk(f"file:{disk},sdb,w")
        dev = []
        for node in qargv.disk_nodes(d):
            dev += ["-blockdev", json.dumps(node)]
        dev += ["-device", qargv.disk_device(d)]
    finally:
        qargv.FILE_AIO, qargv.FILE_CACHE_DIRECT = saved
    return base + dev


def measure_guest(g: RawGuest, k: int) -> dict:
    dev = "/dev/sdb"
    blocks = SIZE_MIB * 256
    g.run("echo 3 > /proc/sys/vm/drop_caches")
    w = g.timed(SEQ_WRITE.format(dev=dev, n=SIZE_MIB))
    r = g.timed(SEQ_READ.format(dev=dev, n=SIZE_MIB, passes=READ_PASSES))
    rr = g.timed(RAND_READ.format(dev=dev, k=k, blocks=blocks))
    return {"seq_write_mib_s": SIZE_MIB / max(w, 0.01), "seq_read_mib_s": READ_PASSES * SIZE_MIB / max(r, 0.01),
            "rand_read_iops": k / max(rr, 0.01)}


def measure_host(disk: Path, k: int) -> dict:
    blocks = SIZE_MIB * 256
    w = host_run(SEQ_WRITE.format(dev=disk, n=SIZE_MIB).replace("conv=fsync", "conv=fsync,notrunc"))
    r = host_run(SEQ_READ.format(dev=disk, n=SIZE_MIB, passes=READ_PASSES))
    rr = host_run(RAND_READ.format(dev=disk, k=k, blocks=blocks))
    return {"seq_write_mib_s": SIZE_MIB / w, "seq_read_mib_s": READ_PASSES * SIZE_MIB / r, "rand_read_iops": k / rr}


def ratios(guest: dict, host: dict) -> dict:
    return {k: round(guest[k] / host[k], 3) for k in guest}


def best(results: dict) -> str:
    """The variant with the best geometric mean of the three guest/host ratios."""
    def score(v):
        r = results[v]["ratio"]
        return (r["seq_write_mib_s"] * r["seq_read_mib_s"] * r["rand_read_iops"]) ** (1 / 3)
    return max(results, key=score)


def best_of(samples: list[dict]) -> dict:
    """Per metric, the best of several runs (noise on a shared host only slows things)."""
    return {k: max(s[k] for s in samples) for k in samples[0]}


def run(k: int = 200, runs: int = 2, progress=print) -> dict:
    image = Path(os.environ.get("PYXEN_IMAGES") or Paths.from_env().images) / "default"
    tmp = Path(tempfile.mkdtemp(prefix="pxdisk", dir="/var/tmp"))   # a disk, not tmpfs
    disk = tmp / "disk.img"
    try:
        with open(disk, "wb") as f:
            f.truncate(SIZE_MIB << 20)
        host = best_of([measure_host(disk, k) for _ in range(runs)])
        progress(f"host: {host}")
        samples: dict[str, list[dict]] = {label(*v): [] for v in VARIANTS}
        for _ in range(runs):
            order = list(VARIANTS)
            random.shuffle(order)
            for aio, direct in order:
                g = RawGuest(guest_argv(aio, direct, image, disk, tmp), tmp / "con.sock")
                try:
                    g.login()
                    samples[label(aio, direct)].append(measure_guest(g, k))
                finally:
                    g.stop()
                progress(f"{label(aio, direct)}: {samples[label(aio, direct)][-1]}")
        out = {}
        for name, got in samples.items():
            res = best_of(got)
            out[name] = {"guest": res, "ratio": ratios(res, host), "samples": got}
        return {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": {"nproc": os.cpu_count(), "machine": platform.machine(), "accel": boot.ACCEL,
                         "loadavg_1m": os.getloadavg()[0]},
                "size_mib": SIZE_MIB, "random_reads": k, "runs": runs, "host_file": host, "variants": out,
                "best": best(out),
                "default": label(qargv.FILE_AIO, qargv.FILE_CACHE_DIRECT)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def format_table(result: dict) -> str:
    lines = [f"file: disk I/O, guest/host ratio ({result['size_mib']} MiB, {result['random_reads']} random 4k reads, "
             f"{result['host']['accel']}, best of {result.get('runs', 1)})",
             f"{'':34}{'seq write':>14}{'seq read':>14}{'rand read':>14}"]
    h = result["host_file"]
    lines.append(f"{'host file':34}{h['seq_write_mib_s']:>9.1f} MiB/s{h['seq_read_mib_s']:>9.1f} MiB/s"
                 f"{h['rand_read_iops']:>10.0f} IOPS")
    for name, v in result["variants"].items():
        g, r = v["guest"], v["ratio"]
        mark = " <- default" if name == result["default"] else ""
        lines.append(f"{name:34}{g['seq_write_mib_s']:>7.1f} ({r['seq_write_mib_s']:.2f}x)"
                     f"{g['seq_read_mib_s']:>7.1f} ({r['seq_read_mib_s']:.2f}x)"
                     f"{g['rand_read_iops']:>7.0f} ({r['rand_read_iops']:.2f}x){mark}")
    lines.append(f"best by geometric mean of ratios: {result['best']}")
    return "\n".join(lines)


if __name__ == "__main__":
    res = run()
    print(format_table(res))
