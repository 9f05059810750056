"""xend's end of a domain's control channel (a virtio-serial port).

It plays the part xenstore's control/ and cpu/N/availability nodes played
for a Xen guest: one command line per request, one answer line ("ok" or
"err <why>").  The default guest image answers it (lib/pyxen/control); a
guest without the handler simply never answers, and requests time out with
a clear error.

The guest writes the other end, so nothing it sends is trusted: an answer
line is at most ``MAX_LINE`` bytes (a longer one drops the connection,
which is made again for the next request, instead of leaving the stream
stuck behind it), and what it says is shown escaped and shortened.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("pyxen.control")

MAX_LINE = 4096


class ControlError(RuntimeError):
    pass


class ControlChannel:
    def __init__(self, name: str, path: str):
        self.name = name
        self.path = path
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Connect now: the guest's handler only listens while a host end is there."""
        try:
            await self._ensure()
        except OSError as e:
            log.warning("%s: control channel not connected: %s", self.name, e)

    async def _ensure(self) -> None:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE)

    async def request(self, line: str, timeout: float = 10.0) -> str:
        async with self._lock:
            try:
                await self._ensure()
                self._writer.write(line.encode() + b"\n")
                await self._writer.drain()
                answer = await asyncio.wait_for(self._reader.readline(), timeout)
            except asyncio.TimeoutError:
                raise ControlError(f"domain {self.name} did not answer {line!r} within {timeout:.0f} s "
                                   "(does the guest run pyxen's control handler?)") from None
            except (ValueError, asyncio.LimitOverrunError):
                # A line longer than MAX_LINE: start afresh next time.
                self._drop()
                raise ControlError(f"domain {self.name} sent a control line longer than {MAX_LINE} bytes "
                                   "(the channel was reset)") from None
            except OSError as e:
                self._drop()
                raise ControlError(f"control channel of domain {self.name}: {e.strerror or e}") from None
        text = answer.decode(errors="replace").strip()
        shown = ascii(text)[1:-1][:200]      # the guest's words: no escapes reach a terminal
        if not text:
            raise ControlError(f"control channel of domain {self.name} closed")
        if text != "ok":
            raise ControlError(f"domain {self.name}: {shown.removeprefix('err ').strip()}")
        return text

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
