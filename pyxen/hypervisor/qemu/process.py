"""QEMU processes seen from the host: start, identify, watch, stop, measure.

QEMU is started with ``-daemonize`` so it outlives xend: the command returns
once QEMU's sockets listen (a natural readiness point), and the process is
re-parented to init.  Identity is checked through /proc before any pid from
a pidfile is trusted, and exits are watched with a pidfd, which works for
processes that are not our children.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class QemuStartError(RuntimeError):
    pass


def start(argv: list[str], pidfile: Path, log: Path, timeout: float = 60.0,
          pass_fds: tuple[int, ...] = (), env: dict | None = None) -> int:
    """Run QEMU (which daemonizes) and return the daemon's pid.  *pass_fds*
    are inherited by QEMU under the same numbers (its ``-add-fd`` disks);
    *env* replaces its environment when given.

    QEMU's stdout and stderr go to *log* (the argv carries ``-D`` so that a
    daemonized QEMU keeps stderr): its errors, even a crash long after start,
    end up in the domain's qemu-dm log instead of /dev/null."""
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "ab") as out:
            start_at = out.tell()
            res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 timeout=timeout, start_new_session=True, pass_fds=pass_fds,
                                 env=env)
    except FileNotFoundError:
        raise QemuStartError(f"QEMU binary not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        pid = read_pidfile(pidfile)
        if pid:
            kill(pid)
        raise QemuStartError(f"QEMU did not start within {timeout:.0f} s") from None
    if res.returncode != 0:
        try:
            with open(log, "rb") as f:
                f.seek(start_at)
                err = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            err = []
        msg = err[-1] if err else f"exit status {res.returncode}"
        pid = read_pidfile(pidfile)
        if pid:
            kill(pid)
        raise QemuStartError(msg.removeprefix(argv[0] + ": "))
    pid = read_pidfile(pidfile)
    if not pid:
        raise QemuStartError("QEMU started but wrote no pidfile")
    return pid


def read_pidfile(pidfile: Path) -> int | None:
    try:
        return int(Path(pidfile).read_text().strip())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_ours(pid: int | None, uuid: str) -> bool:
    """True if *pid* is a live QEMU running the domain *uuid* (not a recycled pid)."""
    if not pid:
        return False
    args = cmdline(pid)
    if not args or "-uuid" not in args:
        return False
    i = args.index("-uuid")
    return i + 1 < len(args) and args[i + 1] == uuid and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


async def wait_exit(pid: int, timeout: float) -> bool:
    """Wait for *pid* to exit; True if it did within *timeout*."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        if not alive(pid):
            return True
        await asyncio.wait_for(fut, timeout)
        return True
    except asyncio.TimeoutError:
        return not alive(pid)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def watch_exit(pid: int, callback) -> object:
    """Call *callback()* once when *pid* exits.  Returns a handle for unwatch()."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        loop.call_soon(callback)
        return None

    def ready():
        loop.remove_reader(fd)
        os.close(fd)
        callback()
    loop.add_reader(fd, ready)
    return fd


def unwatch(handle) -> None:
    if handle is None:
        return
    loop = asyncio.get_running_loop()
    try:
        loop.remove_reader(handle)
        os.close(handle)
    except (OSError, ValueError):
        pass


def thread_stat(pid: int, tid: int) -> tuple[str, float, int]:
    """(state letter, cpu seconds, last cpu) of one thread of *pid*."""
    try:
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return "X", 0.0, -1
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime/stime are fields 14/15; processor is 39.
    utime, stime = int(fields[11]), int(fields[12])
    return fields[0], (utime + stime) / CLK_TCK, int(fields[36])


def thread_affinity(tid: int) -> set[int]:
    try:
        return os.sched_getaffinity(tid)
    except OSError:
        return set()
