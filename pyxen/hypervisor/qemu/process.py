"""QEMU processes seen from the host: start, identify, watch, stop, measure.

xend starts QEMU itself in a session of its own, so it outlives xend (and
is re-parented to init when xend exits); readiness is QMP answering.
Identity is checked through /proc before any pid from
a pidfile is trusted, and exits are watched with a pidfd, which works for
processes that are not our children.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from ... import faults

CLK_TCK = os.sysconf("SC_CLK_TCK")


class QemuStartError(RuntimeError):
    pass


# QEMUs this xend started and has not reaped yet (pid -> Popen): reaped
# when their exit is seen, so none stays a zombie while xend runs.
_children: dict[int, subprocess.Popen] = {}


def start(argv: list[str], pidfile: Path, log: Path, timeout: float = 60.0,
          pass_fds: tuple[int, ...] = (), env: dict | None = None,
          qmp_sock: Path | None = None, launcher: list[str] | None = None) -> int:
    """Start QEMU and return its pid.  *pass_fds* are inherited by QEMU
    under the same numbers (its ``-add-fd`` fdsets, kernel); no other
    descriptor of xend's is.  *env* replaces its environment when given.

    With *qmp_sock* (an argv without ``-daemonize``), xend starts QEMU
    itself, as libvirt does: fork, setsid, *launcher* (the identity and
    capability drop, xend/confine.py), exec, in the run directory (the
    pidfile's) as its cwd.  QEMU is ready once it answers on QMP (its main
    loop runs, so every device was created); exiting before that is a
    start failure.  It stays running when xend exits (its own session,
    re-adopted by the next xend).

    QEMU's stdout and stderr go to *log*: its errors, even a crash long
    after start, end up in the domain's qemu-dm log; a start failure
    reports QEMU's own last line."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if qmp_sock is None:
        return _start_daemonizing(argv, pidfile, log, timeout, pass_fds, env)
    with open(log, "ab") as out:
        start_at = out.tell()
        try:
            child = subprocess.Popen((launcher or []) + argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True, pass_fds=pass_fds, close_fds=True,
                                     env=env if env is not None else _plain_env(), cwd=pidfile.parent)
        except FileNotFoundError as e:
            raise QemuStartError(f"not found: {e.filename or argv[0]}") from None
    _children[child.pid] = child
    faults.point("qemu-before-pidfile")
    # At once, before readiness: an xend that dies while QEMU starts leaves
    # the next one this pidfile to find the QEMU by (domains.py).
    tmp = pidfile.with_name(pidfile.name + ".tmp")
    tmp.write_text(f"{child.pid}\n")
    os.replace(tmp, pidfile)
    deadline = time.monotonic() + timeout
    while True:
        if child.poll() is not None:
            _children.pop(child.pid, None)
            raise QemuStartError(_last_line(log, start_at, argv[0]) or f"exit status {child.returncode}")
        if _qmp_ready(qmp_sock):
            return child.pid
        if time.monotonic() > deadline:
            kill(child.pid)
            reap(child.pid, block=True)
            raise QemuStartError(f"QEMU did not start within {timeout:.0f} s")
        time.sleep(0.02)


def _plain_env() -> dict:
    # Nothing of xend's environment (its settings, a token a test exported)
    # reaches QEMU but a PATH and a neutral locale.
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}


def _last_line(log: Path, start_at: int, prog: str) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(start_at)
            err = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        err = []
    return err[-1].removeprefix(prog + ": ") if err else ""


def _qmp_ready(sock: Path) -> bool:
    """True once QEMU's QMP answers a command: only its main loop runs
    commands (the greeting may come from the monitor thread earlier)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(str(sock))
        f = s.makefile("rwb")
        for cmd in (b'{"execute":"qmp_capabilities"}\n', b'{"execute":"query-status"}\n'):
            f.write(cmd)
            f.flush()
            while True:
                line = f.readline()
                if not line:
                    return False
                if b'"return"' in line or b'"error"' in line:
                    break
        return True
    except (OSError, ValueError):
        return False
    finally:
        s.close()


def _start_daemonizing(argv, pidfile, log, timeout, pass_fds, env) -> int:
    """A QEMU that daemonizes itself (-daemonize; the benchmarks' argv)."""
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
        msg = _last_line(log, start_at, argv[0]) or f"exit status {res.returncode}"
        pid = read_pidfile(pidfile)
        if pid:
            kill(pid)
        raise QemuStartError(msg)
    pid = read_pidfile(pidfile)
    if not pid:
        raise QemuStartError("QEMU started but wrote no pidfile")
    return pid


def reap(pid: int | None, block: bool = False) -> None:
    """Collect the exit of a QEMU this xend started (no-op for others)."""
    child = _children.get(pid) if pid else None
    if child is None:
        return
    if (child.wait() if block else child.poll()) is not None:
        _children.pop(pid, None)


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


def find_by_uuid(uuid: str, run_dir: Path) -> list[int]:
    """Live QEMUs of domain *uuid* started in *run_dir* (their working
    directory, xend starts every QEMU there) — found without a pidfile: an
    xend that died between QEMU's fork and the pidfile's write leaves one
    that only this finds."""
    want = str(run_dir)
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        if not is_ours(pid, uuid):
            continue
        try:
            cwd = os.readlink(d / "cwd")
        except OSError:
            cwd = ""
        # The -daemonize path runs in /, its argv naming the run dir's files.
        if cwd == want or any(want + "/" in a for a in cmdline(pid)):
            found.append(pid)
    return found


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def alive(pid: int) -> bool:
    reap(pid)
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
        reap(pid)


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
        reap(pid)
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
