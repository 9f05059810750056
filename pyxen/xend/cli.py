"""``xend start|stop|restart|status|check-config``: the daemon's command line (§4.1).

``start`` checks the configuration, forks a daemon and returns once its API
socket answers (or prints why it could not start); what the daemon found
wrong but could live with (a network script that failed, a misspelt
option) is printed on stderr too, not only in xend.log.  ``restart``
checks the new configuration before it stops the running xend.
``status`` answers by exit code: 0 running, 3 not.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from ..paths import Paths
from ..hypervisor.qemu import process
from . import startcheck

USAGE = "Usage: xend {start|stop|restart|status|check-config|reprobe|foreground}"


def running_pid(paths: Paths) -> int | None:
    pid = process.read_pidfile(paths.pidfile)
    if not pid or not process.alive(pid):
        return None
    args = process.cmdline(pid)
    if not any("xend" in a for a in args[:3]):
        return None
    return pid


def check_config(paths: Paths, quiet_ok: bool = False) -> int:
    """Print the config's problems; 1 if a new xend could not start with it."""
    errors, warnings, _ = startcheck.check(paths)
    for w in warnings:
        print(f"Warning: {w}", file=sys.stderr)
    for e in errors:
        print(f"Error: {e}", file=sys.stderr)
    if errors:
        return 1
    if not quiet_ok:
        print(f"{paths.xend_config}: OK")
    return 0


def reprobe(paths: Paths) -> int:
    """Forget the cached KVM probe verdict; a running xend is restarted so
    it probes now (its domains keep running)."""
    from .. import storekeys
    from ..store import FileStore
    store = FileStore(paths.state)
    store.delete(storekeys.accel_probe(store.host))
    if not running_pid(paths):
        print("accelerator verdict cleared: xend probes again when it starts")
        return 0
    print("accelerator verdict cleared: restarting xend to probe again")
    return main(["restart"])


def start(paths: Paths) -> int:
    if running_pid(paths):
        print("xend is already running")
        return 0
    if check_config(paths, quiet_ok=True):
        print("Error: xend not started", file=sys.stderr)
        return 1
    for d in (paths.run, paths.log):
        d.mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        _daemon_child(paths, w)
    os.close(w)
    os.waitpid(pid, 0)
    msg = b""
    with os.fdopen(r, "rb") as f:
        msg = f.read()
    first, _, rest = msg.decode(errors="replace").strip().partition("\n")
    if first != "ok":
        text = (first + "\n" + rest).strip()
        print(f"Error: xend failed to start: {text or 'see ' + str(paths.xend_debug_log)}", file=sys.stderr)
        return 1
    # Started, with problems it could live with (the daemon's own list).
    for line in rest.splitlines():
        if line.strip():
            print(f"Warning: {line.strip()}", file=sys.stderr)
    return 0


def _daemon_child(paths: Paths, w: int) -> None:
    from . import daemon
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    out = os.open(paths.xend_debug_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.fchmod(out, 0o640)      # logs are not world-readable (docs/robustness.md)
    os.dup2(out, 1)
    os.dup2(out, 2)

    def ready(err, warnings=()):
        try:
            text = "ok" + "".join(f"\n{x}" for x in warnings) if err is None else err
            os.write(w, text.encode())
            os.close(w)
        except OSError:
            pass
    code = 1
    try:
        code = daemon.run(paths, ready)
    finally:
        os._exit(code)


def stop(paths: Paths, timeout: float = 60.0) -> int:
    pid = running_pid(paths)
    if not pid:
        return 0
    process.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process.alive(pid):
        if time.monotonic() > deadline:
            print(f"Error: xend (pid {pid}) did not stop within {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.05)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(USAGE, file=sys.stderr)
        return 1
    paths = Paths.from_env()
    cmd = argv[0]
    if os.geteuid() != 0 and str(paths.root) == "/":
        print("Error: xend must be run as root.", file=sys.stderr)
        return 1
    if cmd == "start":
        return start(paths)
    if cmd == "stop":
        return stop(paths)
    if cmd in ("restart", "reload"):
        # The new config first: a restart that cannot start leaves the old xend running.
        if check_config(paths, quiet_ok=True):
            print("Error: xend not restarted: the running xend is left as it is", file=sys.stderr)
            return 1
        rc = stop(paths)
        return rc or start(paths)
    if cmd == "check-config":
        return check_config(paths)
    if cmd == "reprobe":
        return reprobe(paths)
    if cmd == "status":
        return 0 if running_pid(paths) else 3
    if cmd == "foreground":
        from . import daemon

        def ready(err, warnings=()):
            if err:
                print(f"Error: {err}", file=sys.stderr)
            for x in warnings:
                print(f"Warning: {x}", file=sys.stderr)
        return daemon.run(paths, ready)
    print(USAGE, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
