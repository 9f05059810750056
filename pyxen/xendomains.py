"""``xendomains``: start and stop domains with the host (manual §3.3).

Behaves as Xen's init script did, driven by the same settings
(``XENDOMAINS_*`` in ``<root>/etc/sysconfig/xendomains`` or
``<root>/etc/default/xendomains``, overridable from the environment):

* ``start`` restores every domain saved in ``XENDOMAINS_SAVE`` by an earlier
  ``stop`` (removing each file once restored), then creates the domains whose
  configs are in ``XENDOMAINS_AUTO`` and that are not already running.
* ``stop`` saves every domain to ``XENDOMAINS_SAVE`` when that is set (or
  migrates it with ``XENDOMAINS_MIGRATE``), else shuts it down
  (``XENDOMAINS_SHUTDOWN``) and finally shuts down whatever is left
  (``XENDOMAINS_SHUTDOWN_ALL``); each ``xm`` call has a watchdog of
  ``XENDOMAINS_STOP_MAXWAIT`` seconds.
* ``status`` reports auto domains that are not running and saved domains
  that were not restored (exit 3 when anything is missing).

It is a client of ``xm``, exactly like the original script.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .paths import Paths

SAVE_MAGIC = b"LinuxGuestRecord"


def defaults(paths: Paths) -> dict[str, str]:
    """The settings before any file or environment variable (xendomains(8) lists them)."""
    return {
        "XENDOMAINS_SYSRQ": "", "XENDOMAINS_USLEEP": "100000", "XENDOMAINS_CREATE_USLEEP": "5000000",
        "XENDOMAINS_MIGRATE": "", "XENDOMAINS_SAVE": str(paths.save_dir),
        "XENDOMAINS_SHUTDOWN": "--halt --wait", "XENDOMAINS_SHUTDOWN_ALL": "--all --halt --wait",
        "XENDOMAINS_RESTORE": "true", "XENDOMAINS_AUTO": str(paths.auto),
        "XENDOMAINS_AUTO_ONLY": "false", "XENDOMAINS_STOP_MAXWAIT": "300",
    }


def settings(paths: Paths) -> dict[str, str]:
    s = defaults(paths)
    for f in (paths.root / "etc/sysconfig/xendomains", paths.root / "etc/default/xendomains"):
        if f.is_file():
            for line in f.read_text().splitlines():
                m = re.match(r'^\s*(XENDOMAINS_[A-Z_]+)=(.*)$', line)
                if m:
                    val = shlex.split(m.group(2), comments=True)
                    s[m.group(1)] = val[0] if val else ""
            break
    for k in list(s):
        if k in os.environ:
            s[k] = os.environ[k]
    return s


def xm(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["xm", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(["xm", *args], 124, "", f"xm {' '.join(args)}: timed out\n")


def running_domains() -> list[tuple[str, str]]:
    """(name, id) of every domain but Domain-0, from ``xm list -l`` as Xen's script parsed it."""
    out = xm("list", "-l").stdout
    doms, name = [], None
    for line in out.splitlines():
        m = re.match(r"^    \(name (.*)\)$", line)
        if m:
            name = m.group(1)
        m = re.match(r"^    \(domid (\d+)\)$", line)
        if m:
            domid = m.group(1)
        if line == ")" and name is not None:
            if name != "Domain-0":
                doms.append((name, domid))
            name = None
    return doms


def config_name(cfg: Path) -> str | None:
    res = xm("create", "--quiet", "--dryrun", "--defconfig", str(cfg))
    m = re.search(r"^\s*\(name (.*)\)$", res.stdout, re.M)
    return m.group(1) if m else None


def is_save_file(f: Path) -> bool:
    try:
        with open(f, "rb") as fh:
            return fh.read(16) == SAVE_MAGIC
    except OSError:
        return False


def start(paths: Paths, s: dict[str, str]) -> int:
    rc = 0
    save = Path(s["XENDOMAINS_SAVE"]) if s["XENDOMAINS_SAVE"] else None
    restored = set()
    if save and s["XENDOMAINS_RESTORE"] == "true" and save.is_dir():
        print("Restoring Xen domains:", end="", flush=True)
        for f in sorted(save.iterdir()):
            if not f.is_file() or not is_save_file(f):
                continue
            print(f" {f.name}", end="", flush=True)
            res = xm("restore", str(f))
            if res.returncode == 0:
                restored.add(f.name)
                f.unlink()
            else:
                rc = 1
                print(f"\n{res.stderr.strip()}", end="")
        print()
    auto = Path(s["XENDOMAINS_AUTO"])
    if auto.is_dir():
        names = {n for n, _ in running_domains()}
        print("Starting auto Xen domains:", end="", flush=True)
        for cfg in sorted(auto.iterdir()):
            if not cfg.is_file() or cfg.name in restored:
                continue
            name = config_name(cfg)
            if name is None or name in names:
                print(f" {cfg.name}(skip)", end="", flush=True)
                continue
            print(f" {cfg.name}", end="", flush=True)
            res = xm("create", "--quiet", "--defconfig", str(cfg))
            if res.returncode != 0:
                rc = 1
                print(f"(failed: {res.stderr.strip()})", end="")
            else:
                names.add(name)
                time.sleep(int(s["XENDOMAINS_CREATE_USLEEP"]) / 1e6)
        print()
    lock = paths.root / "var/lock/subsys"
    lock.mkdir(parents=True, exist_ok=True)
    (lock / "xendomains").touch()
    return rc


def stop(paths: Paths, s: dict[str, str]) -> int:
    rc = 0
    maxwait = float(s["XENDOMAINS_STOP_MAXWAIT"] or 0) or None
    auto_names = set()
    if s["XENDOMAINS_AUTO_ONLY"] == "true" and Path(s["XENDOMAINS_AUTO"]).is_dir():
        auto_names = {config_name(c) for c in Path(s["XENDOMAINS_AUTO"]).iterdir() if c.is_file()}
    print("Shutting down Xen domains:", end="", flush=True)
    for name, domid in running_domains():
        if auto_names and name not in auto_names:
            continue
        print(f" {name}", end="", flush=True)
        for key in s["XENDOMAINS_SYSRQ"].split():
            xm("sysrq", domid, key, timeout=maxwait)
            time.sleep(int(s["XENDOMAINS_USLEEP"]) / 1e6)
        # What happened to each domain follows its name, as in Xen's
        # script: (migr), (save) or (shut).
        if s["XENDOMAINS_MIGRATE"]:
            if xm("migrate", domid, *shlex.split(s["XENDOMAINS_MIGRATE"]), timeout=maxwait).returncode == 0:
                print("(migr)", end="", flush=True)
                continue
        if s["XENDOMAINS_SAVE"]:
            save = Path(s["XENDOMAINS_SAVE"])
            save.mkdir(parents=True, exist_ok=True)
            res = xm("save", domid, str(save / name), timeout=maxwait)
            if res.returncode == 0:
                print("(save)", end="", flush=True)
                continue
            rc = 1
            print(f"(save failed: {res.stderr.strip()})", end="")
        if s["XENDOMAINS_SHUTDOWN"]:
            xm("shutdown", domid, *shlex.split(s["XENDOMAINS_SHUTDOWN"]), timeout=maxwait)
            print("(shut)", end="", flush=True)
    print()
    if running_domains() and s["XENDOMAINS_SHUTDOWN_ALL"]:
        xm("shutdown", *shlex.split(s["XENDOMAINS_SHUTDOWN_ALL"]), timeout=maxwait)
    for name, _ in running_domains():
        rc = 1
        print(f"Domain {name} is still running", file=sys.stderr)
    try:
        (paths.root / "var/lock/subsys/xendomains").unlink()
    except FileNotFoundError:
        pass
    return rc


def status(paths: Paths, s: dict[str, str]) -> int:
    missing = []
    names = {n for n, _ in running_domains()}
    save = Path(s["XENDOMAINS_SAVE"]) if s["XENDOMAINS_SAVE"] else None
    # stop names a save file after its domain: an auto domain that is saved
    # is listed once, as saved, not also as not running.
    saved = sorted(f.name for f in save.iterdir() if is_save_file(f)) if save and save.is_dir() else []
    auto = Path(s["XENDOMAINS_AUTO"])
    if auto.is_dir():
        for cfg in sorted(auto.iterdir()):
            name = config_name(cfg) if cfg.is_file() else None
            if name and name not in names and name not in saved:
                missing.append(name)
    missing += [f"{n} (saved, not restored)" for n in saved]
    if missing:
        print("Checking for xendomains: missing " + ", ".join(missing))
        return 3
    print("Checking for xendomains: all running")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = "Usage: xendomains {start|stop|restart|reload|status}"
    if len(argv) != 1:
        print(usage, file=sys.stderr)
        return 2
    paths = Paths.from_env()
    s = settings(paths)
    cmd = argv[0]
    if cmd == "start":
        return start(paths, s)
    if cmd == "stop":
        return stop(paths, s)
    if cmd in ("restart", "reload"):
        return stop(paths, s) or start(paths, s)
    if cmd == "status":
        return status(paths, s)
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
