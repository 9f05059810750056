"""Storage migration benchmark (issue 19): ``xm migrate --live
--copy-storage`` of a guest with a 1 GiB local disk and 256 MiB of RAM
between two xends in two network namespaces (bench/migrate.py's hosts,
TLS on), against ``qemu-img convert`` of the same image over the same
link in the same run.

Each host has its own disk directory at the same path: host B's xend runs
in a private mount namespace with its directory bind-mounted over the
path (the system test's arrangement), so the copy really lands in a
different file.

* **raw**: ``qemu-nbd`` in B's namespace exports a fresh 1 GiB raw image
  (writable, plain TCP on B's address); ``qemu-img convert -U -n -f raw -O
  raw`` in A's namespace copies the guest's current image into it.  Wall
  time of the convert; throughput = image size / time.
* **raw-tls** (for information): the same over QEMU's TLS-PSK with
  pyxen's priority string — what the encryption alone costs.
* **pyxen**: the guest (booted, idle) is migrated A -> B -> A ...; xend's
  result gives the disk phase's bytes and seconds (``disk_bytes``,
  ``disk_seconds``: mirror start until every mirror is in sync) and the
  total (``seconds``); ``xm``'s wall time is taken too.  The copy left on
  the source after each move is removed so the next move can create it.

Each round runs raw, raw-tls and one move back to back, the guest running
through all three, so one load applies to the three.  Every sample records
the CPU seconds of the processes involved (:class:`CpuWatch`).  The image
is filled with random data (nothing for either side to skip as zeroes).
Target: pyxen's disk throughput >= 0.8x the raw copy's.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from pyxen.testing.guest import GuestConsole
from pyxen.xend import nbdtls

from . import migrate as mb
from .boot import host_info

DISK_MIB = 1024
RAM_MIB = 256
NBD_PORT = 10809
TARGET_RATIO = 0.8
MIB = 1 << 20


class PrivateHost(mb.Host):
    """An xend whose mount namespace has *src* bind-mounted over *path*."""

    def __init__(self, root, ns, ip, path: Path, src: Path):
        super().__init__(root, ns, ip)
        self.path, self.src = path, src

    def start(self) -> None:
        self.run("unshare", "-m", "--propagation", "private", "sh", "-c",
                 f"mount --bind '{self.src}' '{self.path}' && exec ip netns exec {self.ns} xend start")
        self.up = True


class StorageBench(mb.Bench):
    def __init__(self):
        super().__init__()
        self.disks = self.root / "disks"          # the path both configs name (A's own directory)
        self.b_disks = self.root / "bdisks"       # what B sees there
        for d in (self.disks, self.b_disks):
            d.mkdir()

    def make_host(self, i: int, root: Path, ns: str, ip: str) -> mb.Host:
        return mb.Host(root, ns, ip) if i == 0 else PrivateHost(root, ns, ip, self.disks, self.b_disks)


def summarize(raw: list[dict], pyxen: list[dict], raw_tls: list[dict] = ()) -> dict:
    return {"raw_mib_s": mb._stats([s["mib_s"] for s in raw]),
            "raw_tls_mib_s": mb._stats([s["mib_s"] for s in raw_tls]),
            "pyxen_disk_mib_s": mb._stats([s["disk_mib_s"] for s in pyxen]),
            "pyxen_total_s": mb._stats([s["seconds"] for s in pyxen]),
            "pyxen_wall_s": mb._stats([s["wall_s"] for s in pyxen]),
            "pyxen_disk_s": mb._stats([s["disk_seconds"] for s in pyxen])}


def compare(summary: dict) -> dict:
    raw, ours = summary.get("raw_mib_s"), summary.get("pyxen_disk_mib_s")
    if not raw or not ours:
        return {"ratio": None, "target": TARGET_RATIO, "pass": False}
    ratio = round(ours["median"] / raw["median"], 3)
    tls = summary.get("raw_tls_mib_s")
    return {"ratio": ratio, "target": TARGET_RATIO, "pass": ratio >= TARGET_RATIO,
            "ratio_to_tls": round(ours["median"] / tls["median"], 3) if tls else None}


def format_table(result: dict) -> str:
    s, c = result["summary"], result["compare"]

    def row(label, st, unit):
        if not st:
            return f"{label:<34} {'-':>10}"
        return f"{label:<34} {st['median']:>10.2f} {st['min']:>10.2f} {st['max']:>10.2f}  {unit}"
    lines = [f"Storage migration: {DISK_MIB} MiB disk + {RAM_MIB} MiB RAM (TCG, TLS, veth)",
             f"{'':<34} {'median':>10} {'min':>10} {'max':>10}",
             row("qemu-img convert to NBD (raw)", s["raw_mib_s"], "MiB/s"),
             row("  the same over TLS-PSK", s.get("raw_tls_mib_s"), "MiB/s"),
             row("xm migrate --copy-storage: disk", s["pyxen_disk_mib_s"], "MiB/s"),
             row("  disk phase", s["pyxen_disk_s"], "s"),
             row("  xend total", s["pyxen_total_s"], "s"),
             row("  xm wall", s["pyxen_wall_s"], "s"),
             f"disk throughput ratio {c['ratio']} (target >= {c['target']}): {'PASS' if c['pass'] else 'FAIL'}",
             f"ratio to the TLS-PSK copy {c.get('ratio_to_tls')}"]
    return "\n".join(lines)


class CpuWatch:
    """Where the CPU goes during a copy: every 0.2 s, the cumulative CPU
    seconds (utime + stime) of each process whose command line contains
    one of *marks* (kind -> substring, or (substring, [environment
    entries, one of which it must have]): other helpers' xends run on this
    host too), kept per pid (a process that exits keeps its last figure).
    ``usage()``: seconds per kind (the first mark matched)."""

    def __init__(self, marks: dict):
        self.marks, self.seen, self.kind, self.qemus = marks, {}, {}, {}
        self.tick = os.sysconf("SC_CLK_TCK")
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.base = self._sample()
        self.t.start()

    def _sample(self) -> dict[int, float]:
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                kind = self.kind.get(int(pid)) or self._match(pid)
                if kind is None:
                    continue
                out[int(pid)] = self._cpu(f"/proc/{pid}/stat")
                self.kind[int(pid)] = kind
                if kind == "qemu":
                    # Per thread (QEMU names them: debug-threads=on): the
                    # guest's vCPU, the main loop (NBD, mirror), migration.
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                        key = (int(pid), int(tid))
                        out[key] = self._cpu(f"/proc/{pid}/task/{tid}/stat")
                        # Source and target apart: "qemu1" is the first QEMU seen (the source).
                        n = self.qemus.setdefault(int(pid), len(self.qemus) + 1)
                        self.kind[key] = f"qemu{n} " + ("worker" if comm.startswith("worker") else comm)
            except (OSError, IndexError, ValueError):
                continue
        return out

    def _cpu(self, stat: str) -> float:
        st = Path(stat).read_text().rsplit(")", 1)[1].split()
        return (int(st[11]) + int(st[12])) / self.tick

    def _match(self, pid: str) -> str | None:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        for k, m in self.marks.items():
            sub, envs = (m, None) if isinstance(m, str) else m
            if sub in cmd:
                if envs is not None:
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    if not any(e.encode() in env for e in envs):
                        continue
                return k
        return None

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            self.seen.update(self._sample())

    def usage(self) -> dict[str, float]:
        self.stop.set()
        self.t.join()
        self.seen.update(self._sample())
        out: dict[str, float] = {}
        for pid, cpu in self.seen.items():
            k = self.kind[pid]
            out[k] = round(out.get(k, 0) + cpu - self.base.get(pid, 0), 2)
        # Threads that ended (QEMU's thread-pool workers come and go) kept
        # their time in the process's total only.
        threads = sum(v for k, v in out.items() if k.startswith("qemu") and " " in k)
        if "qemu" in out:
            out["qemu (ended threads)"] = round(out["qemu"] - threads, 2)
        return out


def _fill(path: Path) -> None:
    with open("/dev/urandom", "rb") as src, open(path, "wb") as f:
        for _ in range(DISK_MIB):
            f.write(src.read(MIB))


def _psk_dir(b: StorageBench) -> Path:
    """A TLS-PSK key for the raw-tls side, in QEMU's layout (xend/nbdtls.py's)."""
    d = b.root / "psk"
    if not d.is_dir():
        d.mkdir(mode=0o700)
        user, key = nbdtls.new_key()
        (d / nbdtls.KEYS).write_text(f"{user}:{key}\n")
    return d


def raw_copy(b: StorageBench, image: Path, runs: int, progress, first: int = 0, of: int = 0,
             tls: bool = False) -> list[dict]:
    """qemu-img convert into qemu-nbd; with *tls*, over QEMU's TLS with a
    pre-shared key and the same gnutls priority as pyxen's channel (what
    pyxen's copy costs beyond the encryption it must have)."""
    out = []
    label = "raw-tls" if tls else "raw"
    psk = _psk_dir(b) if tls else None
    user = (psk / nbdtls.KEYS).read_text().split(":")[0] if tls else ""
    prio = nbdtls.priority()
    srv_tls = ["--object", f"tls-creds-psk,id=s0,endpoint=server,dir={psk},priority={prio}",
               "--tls-creds", "s0"] if tls else []
    cli_obj = ["--object", f"tls-creds-psk,id=c0,endpoint=client,dir={psk},username={user},priority={prio}"] \
        if tls else []
    target = (["--target-image-opts", f"driver=nbd,host={mb.B_IP},port={NBD_PORT},export=t,tls-creds=c0"]
              if tls else ["-O", "raw", f"nbd://{mb.B_IP}:{NBD_PORT}/t"])
    for i in range(first, first + runs):
        dest = b.b_disks / "nbd-target.img"
        mb.sh("qemu-img", "create", "-q", "-f", "raw", str(dest), f"{DISK_MIB}M")
        srv = subprocess.Popen(["ip", "netns", "exec", b.ns[1], "qemu-nbd", "-f", "raw", "-b", mb.B_IP,
                                "-p", str(NBD_PORT), "-x", "t", "--persistent", "-t", *srv_tls, str(dest)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while True:
                probe = subprocess.run(["ip", "netns", "exec", b.ns[0], "qemu-img", "info", *cli_obj,
                                        *(["--image-opts", target[1]] if tls else [target[2]])],
                                       capture_output=True)
                if probe.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            cpu = CpuWatch({"qemu-img": "qemu-img convert", "qemu-nbd": "qemu-nbd -f raw"})
            t0 = time.monotonic()
            # -U: the guest has the image open (and locked) meanwhile.
            mb.sh("ip", "netns", "exec", b.ns[0], "qemu-img", "convert", "-U", "-n", "-f", "raw", *cli_obj,
                  str(image), *target, timeout=1200)
            secs = time.monotonic() - t0
            used = cpu.usage()
        finally:
            srv.terminate()
            srv.wait(10)
            dest.unlink(missing_ok=True)
        out.append({"seconds": round(secs, 3), "mib_s": round(DISK_MIB / secs, 1), "cpu_s": used,
                    "loadavg_1min": round(os.getloadavg()[0], 2)})
        progress(f"{label} run {i + 1}/{of or runs}: qemu-img convert {secs:.2f} s, {DISK_MIB / secs:.1f} MiB/s, "
                 f"CPU s {used}")
    return out


def pyxen_copy(b: StorageBench, image: Path, runs: int, progress, before=None) -> list[dict]:
    """*before(i)*, if given, runs before the i-th move (the raw copy, so
    both sides of each pair see the same load and the same idle guest)."""
    a, bh = b.hosts
    name = "migdisk"
    cfgfile, _ = b.config(name, RAM_MIB)
    with open(cfgfile, "a") as f:
        f.write(f"disk = ['file:{image},xvdb,w']\n")
    a.run("xm", "create", str(cfgfile))
    con = GuestConsole(name, env=a.env, timeout=300)
    try:
        con.login(timeout=300)
    finally:
        con.close()
    out = []
    here, there = a, bh
    own = {id(a): b.disks / image.name, id(bh): b.b_disks / image.name}
    try:
        for i in range(runs):
            if before is not None:
                before(i)
            time.sleep(mb.SETTLE_S)
            watch = mb.EventWatch(here, name)
            cpu = CpuWatch({"qemu": f"-name {name},",
                            "xend": ("xend start", [f"PYXEN_ROOT={h.root}" for h in b.hosts])})
            t0 = time.monotonic()
            here.run("xm", "migrate", "--live", "--copy-storage", name, there.ip, timeout=1800)
            wall = time.monotonic() - t0
            used = cpu.usage()
            res = watch.wait() or {}
            disk_s = res.get("disk_seconds") or 0
            sample = {"wall_s": round(wall, 3), "direction": f"{here.ip}->{there.ip}",
                      "seconds": res.get("seconds"), "disk_seconds": disk_s, "disk_bytes": res.get("disk_bytes"),
                      "disk_mib_s": round((res.get("disk_bytes") or 0) / MIB / disk_s, 1) if disk_s else None,
                      "downtime_ms": res.get("downtime_ms"), "bytes": res.get("bytes"), "disks": res.get("disks"),
                      "cpu_s": used, "loadavg_1min": round(os.getloadavg()[0], 2)}
            out.append(sample)
            progress(f"pyxen run {i + 1}/{runs}: xm {wall:.2f} s, xend {sample['seconds']} s, disk "
                     f"{disk_s} s ({sample['disk_mib_s']} MiB/s), downtime {sample['downtime_ms']} ms, "
                     f"CPU s {used} (both QEMUs, both xends; the whole migration)")
            os.unlink(own[id(here)])        # the source's old copy: the way back creates it anew
            here, there = there, here
    finally:
        subprocess.run(["xm", "destroy", name], env=here.env, capture_output=True)
    return out


def run(runs: int = 2, progress=print) -> dict:
    with StorageBench() as b:
        host = host_info(b)
        host["loadavg_1min"] = round(os.getloadavg()[0], 2)
        image = b.disks / "disk.img"
        progress(f"filling a {DISK_MIB} MiB image with random data")
        _fill(image)
        raw: list[dict] = []
        raw_tls: list[dict] = []

        def before(i: int) -> None:
            # The guest's current copy: A's, then B's after the first move, ...
            src = (b.disks, b.b_disks)[i % 2] / image.name
            raw.extend(raw_copy(b, src, 1, progress, i, runs))
            raw_tls.extend(raw_copy(b, src, 1, progress, i, runs, tls=True))
        pyxen = pyxen_copy(b, image, runs, progress, before=before)
        summary = summarize(raw, pyxen, raw_tls)
        return {"benchmark": "migrate-storage",
                "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": host,
                "config": {"runs": runs, "disk_mib": DISK_MIB, "ram_mib": RAM_MIB, "tls": True,
                           "link": "veth between two network namespaces", "image": "raw, random data",
                           "mirror": "blockdev-mirror sync=full copy-mode=write-blocking",
                           "nbd": "QEMU to QEMU, TLS-PSK (xend/nbdtls.py)"},
                "samples": {"raw": raw, "raw_tls": raw_tls, "pyxen": pyxen},
                "summary": summary,
                "compare": compare(summary)}
