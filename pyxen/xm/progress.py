"""``xm migrate``'s progress line: follows xend's event stream (the
``migrating`` events the source xend publishes twice a second) while the
migrate request runs, and prints bytes sent, dirty rate and the expected
downtime on stderr — one updating line on a terminal, a line per second
otherwise."""

from __future__ import annotations

import threading
import time

MiB = 1 << 20


def _mib(n) -> str:
    return f"{(n or 0) / MiB:.1f}"


def line(name: str, target: str, p: dict) -> str:
    disk = p.get("disk") or {}
    if p.get("phase") == "disks":
        # --copy-storage: the disks first (mirror until in sync), then memory.
        dt, dd = disk.get("total") or 0, disk.get("transferred") or 0
        pct = f"{100 * dd / dt:3.0f}%" if dt else "  ?%"
        return (f"Copying disks of {name} to {target}: {pct} {_mib(dd)} of {_mib(dt)} MiB, "
                f"{disk.get('ready', 0)}/{disk.get('disks', 0)} in sync")
    mem = _memory_line(name, target, p)
    return mem + (f"; disks {_mib(disk.get('transferred'))} MiB, in sync" if disk else "")


def _memory_line(name: str, target: str, p: dict) -> str:
    total, left = p.get("total") or 0, p.get("remaining") or 0
    pct = f"{100 * (total - left) / total:3.0f}%" if total else "  ?%"
    exp = p.get("expected_downtime_ms")
    return (f"Migrating {name} to {target}: {pct} {_mib(p.get('transferred'))} MiB sent, "
            f"{_mib(left)} MiB left, dirtying {_mib(p.get('dirty_rate'))} MiB/s, pass {p.get('passes', 0)}, "
            f"expected downtime {exp if exp is not None else '?'} ms (limit {p.get('downtime_limit_ms')} ms)")


def summary(res: dict) -> str:
    """The line a finished migration ends with, with or without a terminal."""
    dt = res.get("downtime_ms")
    return (f"Migrated to {res.get('host')}:{res.get('port')} in {res.get('seconds')} s, "
            f"{_mib(res.get('bytes'))} MiB sent, downtime {dt if dt is not None else '?'} ms"
            + (f"; disks: {res['disks']}" if res.get("disks") else "")
            + (f"; now domain {res.get('target_domid')} on this same host" if res.get("same_host") else "")
            + "\n"
            + "".join(f"Warning: {w}\n" for w in res.get("warnings") or ()))


class MigrationProgress:
    def __init__(self, client, dom: str, out):
        self.client, self.dom, self.out = client, dom, out
        self.tty = out.isatty()
        self._opened = threading.Event()
        self._last = 0.0
        self._printed = False
        self._lock = threading.Lock()
        self._finished = False

    def __enter__(self):
        t = threading.Thread(target=self._follow, daemon=True)
        t.start()
        # Subscribe before the request starts, so no event is missed; a
        # failing stream only costs the progress line.
        self._opened.wait(5)
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._finished = True
            if self._printed and self.tty:
                self.out.write("\n")
                self.out.flush()
        return False

    def _mine(self, data: dict) -> bool:
        return self.dom in (data.get("name"), data.get("uuid"), str(data.get("domid")))

    def _follow(self) -> None:
        try:
            for event, data in self.client.stream("/api/events", on_open=self._opened.set):
                if event != "migrating" or not isinstance(data, dict) or not self._mine(data):
                    continue
                now = time.monotonic()
                if not self.tty and now - self._last < 1.0:
                    continue
                self._last = now
                text = line(data.get("name", self.dom), data.get("target", "?"), data.get("progress") or {})
                with self._lock:
                    if self._finished:
                        return
                    self.out.write(f"\r{text}\x1b[K" if self.tty else text + "\n")
                    self.out.flush()
                    self._printed = True
        except Exception:
            self._opened.set()

    def done(self, res: dict) -> None:
        with self._lock:
            self._finished = True
            if self._printed and self.tty:
                self.out.write("\n")
            self._printed = False
            self.out.write(summary(res))
            self.out.flush()
