"""Polling with a deadline, for tests and tools that wait on the outside
world (a guest's state, a process) where no event is available."""

from __future__ import annotations

import time


def poll(fn, timeout: float = 60.0, interval: float = 0.1, what: str = "condition", detail=None):
    """Call *fn* until it returns something true; fail after *timeout*
    seconds, with what *detail* (a callable) says of the state then: a
    failure seen once in CI must say enough to be understood."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            more = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{more}")
        time.sleep(interval)
