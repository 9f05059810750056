"""Xen's network and vif scripts: where they live, and running them.

xend runs the ``network-script`` (xend-config.sxp) as ``<script> start``
when it starts and ``<script> stop`` when it stops, and a vif script as
``<script> online`` / ``<script> offline`` for each vif coming and going.
A script setting is a name or path optionally followed by ``name=value``
arguments (``'network-bridge netdev=eth0'``); a name without a ``/`` is
looked up in ``<root>/etc/xen/scripts``.  What each script receives is
documented in ``vif-common.sh`` and ``xen-network-common.sh``.

pyxen ships its own scripts (network-bridge/route/nat/vnet, vif-bridge/route/nat)
and lays them out in that directory; an administrator may point the
settings at scripts of their own instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
from importlib import resources
from pathlib import Path

log = logging.getLogger("pyxen.net")

BUILTIN = ("xen-network-common.sh", "vif-common.sh", "network-bridge", "vif-bridge",
           "network-route", "vif-route", "network-nat", "vif-nat", "network-vnet")
# A shipped script still carrying this word is pyxen's to upgrade; one an
# administrator edited (and took the line out of) is left alone.
MARKER = "pyxen-managed"


class ScriptError(Exception):
    pass


def shipped(name: str) -> bytes:
    return resources.files("pyxen.data.scripts").joinpath(name).read_bytes()


def install(dest: Path) -> list[str]:
    """Lay the built-in scripts out in *dest*; return the names written."""
    from ..fileutil import atomic_write
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in BUILTIN:
        data = shipped(name)
        p = dest / name
        try:
            old = p.read_bytes()
        except FileNotFoundError:
            old = None
        if old == data or (old is not None and MARKER.encode() not in old):
            continue
        atomic_write(p, data, 0o644 if name.endswith(".sh") else 0o755)
        written.append(name)
    return written


def split(setting: str) -> tuple[str, list[str]]:
    """'network-bridge netdev=eth0' -> ('network-bridge', ['netdev=eth0'])."""
    try:
        words = shlex.split(setting)
    except ValueError as e:
        raise ScriptError(f"bad script setting {setting!r}: {e}") from None
    if not words:
        raise ScriptError("empty script setting")
    for w in words[1:]:
        if "=" not in w:
            raise ScriptError(f"bad script argument {w!r} in {setting!r} (expected name=value)")
    return words[0], words[1:]


def resolve(script: str, scripts_dir: Path) -> Path:
    """The file a script name or path refers to; ScriptError if it cannot run."""
    p = Path(script)
    if not p.is_absolute():
        p = scripts_dir / p
    if not p.is_file():
        raise ScriptError(f"script {script} not found ({p})")
    if not os.access(p, os.X_OK):
        raise ScriptError(f"script {p} is not executable")
    return p


def environment(extra: dict[str, str]) -> dict[str, str]:
    """A clean environment: nothing inherited that a script could mistake for a setting."""
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["HOME"] = "/"
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    return env


async def run(path: Path, action: str, args: list[str], env: dict[str, str], timeout: float) -> str:
    """Run ``path action args...``; return its output, or raise ScriptError with its last error line."""
    argv = [str(path), action, *args]
    log.debug("running %s", " ".join(shlex.quote(a) for a in argv))
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd="/", start_new_session=True)
    except OSError as e:
        raise ScriptError(f"{path.name} {action}: cannot run {path}: {e.strerror or e}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        await proc.wait()
        raise ScriptError(f"{path.name} {action} did not finish within {timeout:.0f} s") from None
    text_out = out.decode(errors="replace")
    text_err = err.decode(errors="replace")
    for line in (text_out + text_err).splitlines():
        if line.strip():
            log.debug("%s %s: %s", path.name, action, line)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in text_err.splitlines() if ln.strip()] or \
                [ln.strip() for ln in text_out.splitlines() if ln.strip()]
        raise ScriptError(lines[-1] if lines else
                          f"{path.name} {action} failed with exit status {proc.returncode}")
    return text_out
