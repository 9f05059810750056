"""``xm top`` / ``xentop``: live per-domain CPU, memory, vCPU, network and
block figures in xentop's layout, interactive (curses) or batch (-b).

CPU(%) is the domain's CPU time over the wall time between two samples,
so the first sample of a run shows 0.0 as xentop does.
"""

from __future__ import annotations

import argparse
import sys
import time

from .client import Client, XmError

HEADER = ("      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS "
          "NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR SSID")


def state_string(flags: str) -> str:
    """xm's rbpscd flags -> xentop's dsbcpr order."""
    have = {c for c in flags if c != "-"}
    return "".join(c if c in have else "-" for c in "dsbcpr")


def row(d: dict, pct: float, total_kib: int) -> str:
    st = d.get("stats", {})
    mem_k = d["memory"] * 1024
    max_k = d.get("maxmem", d["memory"]) * 1024
    return ("%10.10s %6s %10d %6.1f %10d %6.1f %10d %9.1f %5d %4d %8d %8d %4d %8d %8d %8d %4d" % (
        d["name"], state_string(d["state"]), int(d["cpu_time"]), pct, mem_k, 100.0 * mem_k / total_kib,
        max_k, 100.0 * max_k / total_kib, d.get("online_vcpus") or d["vcpus"], st.get("nets", 0),
        st.get("net_tx", 0) // 1024, st.get("net_rx", 0) // 1024, st.get("vbds", 0), st.get("vbd_oo", 0),
        st.get("vbd_rd", 0), st.get("vbd_wr", 0), 0))


def summary(domains: list[dict], info: dict, now: float) -> list[str]:
    counts = {k: sum(1 for d in domains if k in d["state"]) for k in "rbpcds"}
    total = int(info.get("total_memory", 0)) * 1024
    free = int(info.get("free_memory", 0)) * 1024
    return [
        f"xentop - {time.strftime('%H:%M:%S', time.localtime(now))}   Xen {info.get('xen_major')}."
        f"{info.get('xen_minor')}{info.get('xen_extra')} ({info.get('accelerator')})",
        f"{len(domains)} domains: {counts['r']} running, {counts['b']} blocked, {counts['p']} paused, "
        f"{counts['c']} crashed, {counts['d']} dying, {counts['s']} shutdown ",
        f"Mem: {total}k total, {total - free}k used, {free}k free    CPUs: {info.get('nr_cpus')} @ "
        f"{info.get('cpu_mhz')}MHz",
    ]


class Sampler:
    def __init__(self, client: Client):
        self.client = client
        self.prev: dict[str, tuple[float, float]] = {}
        info = dict(client.get("/api/host")["info"])
        self.info = info
        self.total_kib = int(info.get("total_memory", 1)) * 1024

    def sample(self) -> tuple[float, list[str]]:
        now = time.monotonic()
        doms = sorted(self.client.get("/api/domains?stats=1")["domains"], key=lambda d: d["name"])
        lines = summary(doms, self.info, time.time()) + [HEADER]
        for d in doms:
            key = d["uuid"]
            pct = 0.0
            if key in self.prev:
                t0, c0 = self.prev[key]
                if now > t0:
                    pct = max(0.0, 100.0 * (d["cpu_time"] - c0) / (now - t0))
            self.prev[key] = (now, d["cpu_time"])
            lines.append(row(d, pct, self.total_kib))
        return now, lines


def batch(s: Sampler, iterations: int, delay: float) -> None:
    n = 0
    while iterations <= 0 or n < iterations:
        if n:
            time.sleep(delay)
        _, lines = s.sample()
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        n += 1


def interactive(s: Sampler, delay: float, iterations: int) -> None:
    import curses

    def loop(scr):
        curses.curs_set(0)
        scr.timeout(int(delay * 1000))
        n = 0
        while iterations <= 0 or n < iterations:
            _, lines = s.sample()
            scr.erase()
            h, w = scr.getmaxyx()
            for y, line in enumerate(lines[:h - 1]):
                scr.addnstr(y, 0, line, w - 1, curses.A_REVERSE if y == 3 else 0)
            scr.addnstr(h - 1, 0, "Q Quit  (refresh every %.1f s)" % delay, w - 1)
            scr.refresh()
            n += 1
            if scr.getch() in (ord("q"), ord("Q")):
                return
    curses.wrapper(loop)


def main(argv: list[str] | None = None, client: Client | None = None) -> int:
    p = argparse.ArgumentParser(prog="xentop", description="Live domain statistics (xentop).")
    p.add_argument("-d", "--delay", type=float, default=3.0, help="seconds between updates (default 3)")
    p.add_argument("-b", "--batch", action="store_true", help="batch mode: plain text to stdout")
    p.add_argument("-i", "--iterations", type=int, default=0, help="number of updates, then exit")
    for flag, long in (("-n", "--networks"), ("-x", "--vbds"), ("-r", "--repeat-header"), ("-v", "--vcpus")):
        p.add_argument(flag, long, action="store_true", help="accepted for compatibility")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.delay <= 0:
        print("Error: delay must be positive", file=sys.stderr)
        return 1
    try:
        s = Sampler(client or Client())
        if args.batch or not sys.stdout.isatty():
            batch(s, args.iterations, args.delay)
        else:
            interactive(s, args.delay, args.iterations)
    except XmError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
