"""swtpm processes: the software TPM 2.0 behind a domain's vTPM.

One swtpm per domain, started before its QEMU (which connects to the
swtpm's control socket and drives it), daemonized so it outlives xend like
QEMU does, and found again after an xend restart through its pidfile and
/proc.  ``--terminate`` makes it exit when QEMU lets go of it, so a QEMU
that dies never leaves a swtpm behind for long.  Its state directory holds
the TPM's persistent state (NV, keys, seeds); QEMU carries the volatile
state (PCRs, sessions) in its migration stream, so save/restore and
migration start a fresh swtpm on the receiving side.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .qemu import process

BINARY = "swtpm"


class SwtpmError(RuntimeError):
    pass


def available() -> bool:
    return shutil.which(BINARY) is not None


def start(state_dir: Path, sock: Path, pidfile: Path, log: Path, timeout: float = 30.0) -> int:
    """Start a daemonized swtpm on *state_dir*, its control socket at *sock*; returns its pid."""
    for p in (state_dir, sock, pidfile, log):
        if "," in str(p):
            # swtpm's option syntax has no escape for commas.
            raise SwtpmError(f"path {p} contains a comma, which swtpm cannot take")
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [BINARY, "socket", "--tpm2",
            "--tpmstate", f"dir={state_dir},mode=0600",
            "--ctrl", f"type=unixio,path={sock},mode=0600",
            "--pid", f"file={pidfile}",
            "--log", f"file={log}",
            "--terminate", "--daemon"]
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                             start_new_session=True)
    except FileNotFoundError:
        raise SwtpmError("swtpm is not installed (Debian package swtpm)") from None
    except subprocess.TimeoutExpired:
        pid = process.read_pidfile(pidfile)
        if pid and is_ours(pid, sock):
            process.kill(pid)
        raise SwtpmError(f"swtpm did not start within {timeout:.0f} s") from None
    if res.returncode != 0:
        err = (res.stderr or res.stdout).decode(errors="replace").strip().splitlines()
        raise SwtpmError(f"swtpm failed: {err[-1] if err else f'exit status {res.returncode}'}")
    # The daemon writes its pidfile and listens before the parent returns;
    # a short poll covers a slow disk.
    deadline = time.monotonic() + timeout
    while True:
        pid = process.read_pidfile(pidfile)
        if pid and sock.exists() and is_ours(pid, sock):
            return pid
        if time.monotonic() > deadline:
            raise SwtpmError("swtpm started but its control socket or pidfile did not appear")
        time.sleep(0.02)


def is_ours(pid: int | None, sock: Path) -> bool:
    """True if *pid* is a live swtpm serving control socket *sock* (not a recycled pid)."""
    if not pid or not process.alive(pid):
        return False
    args = process.cmdline(pid)
    return bool(args) and os.path.basename(args[0]) == BINARY and \
        any(a.startswith(f"type=unixio,path={sock},") for a in args)


def find(sock: Path, pidfile: Path) -> int | None:
    pid = process.read_pidfile(pidfile)
    return pid if is_ours(pid, sock) else None


async def stop(sock: Path, pidfile: Path, timeout: float = 5.0) -> None:
    """Stop the swtpm serving *sock* (it has usually gone with its QEMU already)."""
    pid = find(sock, pidfile)
    if pid is None:
        return
    process.kill(pid, signal.SIGTERM)
    if not await process.wait_exit(pid, timeout):
        process.kill(pid)
        await process.wait_exit(pid, timeout)
