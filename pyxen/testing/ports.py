"""Free TCP ports on loopback for the tests' xends (HTTP API, relocation)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (the kernel's choice; a test
    binds it soon after, so a collision is possible but rare)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
