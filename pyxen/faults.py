"""Fault injection for the crash-consistency tests.

``PYXEN_FAULTS=point[,point...]`` in xend's environment makes xend kill
itself (SIGKILL, no cleanup) when it reaches a named point, so tests can
prove that every crash window leaves state that the next xend finishes or
rolls back.  Unset in production; the check is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_ARMED = frozenset(p for p in os.environ.get("PYXEN_FAULTS", "").split(",") if p)


def point(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
