"""Fault injection for the crash-consistency tests.

``PYXEN_FAULTS=point[,point...]`` in xend's environment makes xend kill
itself (SIGKILL, no cleanup) when it reaches a named point, so tests can
prove that every crash window leaves state that the next xend finishes or
rolls back.  ``point:stall=SECONDS`` instead stops xend there that long
(the whole thread, the event loop with it; other threads, such as the
cluster's keep-alive and fence watchdog, run on), after logging
``fault: stalling at POINT``, so a test can change the world in that window
(cut the host off etcd in the middle of a migration).  Unset in production;
the check is a dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import signal
import time

_SPEC = [p for p in os.environ.get("PYXEN_FAULTS", "").split(",") if p]
_ARMED = frozenset(p for p in _SPEC if ":" not in p)
_STALLS = {p.split(":", 1)[0]: float(p.split("stall=", 1)[1]) for p in _SPEC if ":stall=" in p}


def point(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
    if name in _STALLS:
        logging.getLogger("pyxen.faults").warning("fault: stalling at %s for %.1f s", name, _STALLS[name])
        time.sleep(_STALLS[name])
