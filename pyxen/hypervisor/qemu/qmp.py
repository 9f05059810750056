"""One long-lived QMP session per domain, built on the ``qemu.qmp`` library.

Adds what a toolstack needs around the library: a deadline on every command
(one hung QEMU must not hang ``xm list`` for everyone), an event callback,
and a callback when the monitor goes away (QEMU exited or was killed).
The commands themselves are sent through the typed monitor (monitor.py).
"""

from __future__ import annotations

import asyncio
import logging

from qemu.qmp import QMPClient, Runstate
from qemu.qmp import ExecuteError, QMPError  # noqa: F401  (re-exported)

log = logging.getLogger("pyxen.qmp")
# The library logs every disconnect at WARNING; our own log says what matters.
logging.getLogger("qemu.qmp").setLevel(logging.ERROR)


class QmpTimeout(RuntimeError):
    pass


class QmpSession:
    def __init__(self, name: str, on_event=None, on_disconnect=None):
        self.name = name
        self.client = QMPClient(name)
        self.on_event = on_event
        self.on_disconnect = on_disconnect
        self._tasks: list[asyncio.Task] = []
        self._closing = False

    async def connect(self, path: str, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.client.connect(path), timeout)
        self._tasks.append(asyncio.create_task(self._events(), name=f"qmp-events-{self.name}"))
        self._tasks.append(asyncio.create_task(self._watch(), name=f"qmp-watch-{self.name}"))

    async def execute(self, cmd: str, args: dict | None = None, timeout: float = 15.0):
        """One command with a deadline.  Not logged here: the typed monitor
        (monitor.py) logs what it sends, secrets left out."""
        try:
            return await asyncio.wait_for(self.client.execute(cmd, args), timeout)
        except asyncio.TimeoutError:
            raise QmpTimeout(f"QEMU did not answer {cmd} within {timeout:.0f} s") from None

    def send_fd_scm(self, fd: int) -> None:
        """Pass a copy of *fd* with the next command (getfd, add-fd)."""
        self.client.send_fd_scm(fd)

    async def _events(self) -> None:
        try:
            async for ev in self.client.events:
                log.debug("%s: event %s %s", self.name, ev.get("event"), ev.get("data", {}))
                if self.on_event:
                    try:
                        await self.on_event(ev)
                    except Exception:
                        log.exception("%s: event handler failed", self.name)
        except asyncio.CancelledError:
            pass

    async def _watch(self) -> None:
        try:
            while True:
                state = await self.client.runstate_changed()
                if state in (Runstate.DISCONNECTING, Runstate.IDLE):
                    break
        except asyncio.CancelledError:
            return
        if not self._closing and self.on_disconnect:
            await self.on_disconnect()

    async def close(self) -> None:
        """Drop the connection (QEMU keeps running)."""
        self._closing = True
        me = asyncio.current_task()
        for t in self._tasks:
            if t is not me:
                t.cancel()
        try:
            await asyncio.wait_for(self.client.disconnect(), 5)
        except Exception:
            pass
