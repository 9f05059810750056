"""Polling with a deadline, for tests and tools that wait on the outside
world (a guest's state, a process) where no event is available."""

from __future__ import annotations

import time


def poll(fn, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    """Call *fn* until it returns something true; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
