"""``xm qemu-monitor DOM 'screendump FILE'`` by descriptor.

A confined QEMU (xend/confine.py) can open no host path, so xend creates
the picture file under the rule for every file it writes at a path a user
names (xend/userpath.py: a new 0600 file beside the target, renamed over
it when complete), hands QEMU a write-only descriptor of it in an fdset and
runs the same HMP command on ``/dev/fdset/N``.
"""

from __future__ import annotations

import os
import shlex

from ..hypervisor.qemu.monitor import Monitor
from . import userpath
from .errors import InvalidRequest

__all__ = ["is_screendump", "run"]


def is_screendump(line: str) -> bool:
    return line.split(None, 1)[:1] == ["screendump"]


def _split(line: str) -> tuple[str, list[str]]:
    """(file, the other arguments) of ``screendump FILE [-f FMT] [DEVICE [HEAD]]``."""
    try:
        toks = shlex.split(line)[1:]
    except ValueError as e:
        raise InvalidRequest(f"qemu-monitor: screendump: {e}") from None
    if not toks or toks[0].startswith("-"):
        raise InvalidRequest("qemu-monitor: usage: screendump FILE [-f ppm|png] [DEVICE [HEAD]]")
    return toks[0], toks[1:]


async def run(mon: Monitor, line: str) -> str:
    """Run a screendump command line; returns QEMU's (empty) output."""
    target, rest = _split(line)
    path = userpath.check(target, "screendump file")
    fd, tmp = userpath.create_temp(path, ".pyxen-ppm")
    try:
        # QEMU opens the fdset write-only: the descriptor's mode must match.
        wfd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            fdset = await mon.add_fd(wfd, "pyxen-screendump")
        finally:
            os.close(wfd)
        try:
            out = await mon.human_command(" ".join(["screendump", f"/dev/fdset/{fdset}"]
                                                   + [shlex.quote(a) for a in rest]))
        finally:
            await mon.remove_fdset(fdset)
        if out.strip():
            # HMP reports failure as text ("could not open ..."): no file then.
            raise InvalidRequest("qemu-monitor: " + out.strip().replace(f"/dev/fdset/{fdset}", target))
        userpath.commit(tmp, path, "screendump file")
        return out
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(fd)
