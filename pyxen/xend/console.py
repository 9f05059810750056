"""Domain consoles: xend's side of the guest's serial port.

QEMU exposes the serial port as a Unix socket that only xend connects to
(consoles are reachable only through xend).  Like Xen's xenconsoled, output
nobody is reading is kept (up to ``console-limit`` KiB) and handed to the
next client that attaches, so ``xm console`` shows what happened meanwhile.
One client at a time: ``xm console`` over the API, or the TCP export.

The TCP export (``xend-console-server yes``) is a root shell in the guest
for whoever reaches the port, so it asks first: the first line a TCP
client sends must be the API token (``xend-http-token``), within
``AUTH_TIMEOUT`` seconds; without a token xend does not export at all.
Every byte of output is also counted for the console log's rotation
(consolelog.py).
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from . import preauth
from .consolelog import ConsoleLog

log = logging.getLogger("pyxen.console")

AUTH_TIMEOUT = 30.0     # a person types the token (or pastes it)
MAX_TOKEN_LINE = 256


class ConsoleBusy(Exception):
    pass


class ConsoleClient:
    """What a relay needs from an attached client."""

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class ConsoleRelay:
    def __init__(self, name: str, path: str, limit: int = 1024 * 1024,
                 console_log: ConsoleLog | None = None):
        self.name = name
        self.path = path
        self.limit = limit
        self.console_log = console_log
        self.pending = bytearray()
        self.client: ConsoleClient | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._tcp: asyncio.AbstractServer | None = None

    async def start(self, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(self.path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        self._task = asyncio.create_task(self._pump(reader), name=f"console-{self.name}")

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.console_log is not None:
                    self.console_log.wrote(len(data))
                client = self.client
                if client is not None:
                    try:
                        await client.send(data)
                        continue
                    except Exception:
                        self.client = None
                self.pending += data
                if len(self.pending) > self.limit:
                    del self.pending[:len(self.pending) - self.limit]
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            c, self.client = self.client, None
            if c is not None:
                try:
                    await c.close()
                except Exception:
                    pass

    def attach(self, client: ConsoleClient) -> bytes:
        if self.client is not None:
            raise ConsoleBusy(f"the console of domain {self.name} is in use by another client")
        self.client = client
        data, self.pending = bytes(self.pending), bytearray()
        return data

    def detach(self, client: ConsoleClient) -> None:
        if self.client is client:
            self.client = None

    async def write(self, data: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            return
        self._writer.write(data)
        await self._writer.drain()

    # ---- TCP export (the 3.0 'console' port), one client at a time
    async def export_tcp(self, host: str, port: int, token: str) -> None:
        if not token:
            raise ValueError("no API token to protect the TCP console with")
        self._token = token
        # Clients are strangers until they have typed the token.
        self._budget = preauth.Budget(f"console {self.name}", log, total=4, per_peer=2,
                                      deadline=AUTH_TIMEOUT, refused_as=f"{self.name}: refused a TCP console client")
        self._tcp = await asyncio.start_server(self._tcp_client, host, port, limit=MAX_TOKEN_LINE * 4)
        log.info("%s: console exported on %s:%d (API token required)", self.name, host, port)

    async def _authenticate(self, reader, writer) -> bool:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else "?"
        ticket = self._budget.admit(ip)
        if ticket is None:
            return False
        try:
            writer.write(f"console of domain {self.name}: type the API token (xend-http-token) "
                         "and Enter\r\n".encode())
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), AUTH_TIMEOUT)
            except (asyncio.TimeoutError, ValueError, asyncio.LimitOverrunError):
                self._budget.refuse(ip, "no token line")
                return False
            got = line.strip()[:MAX_TOKEN_LINE]
            if not hmac.compare_digest(got, self._token.encode()):
                self._budget.refuse(ip, "wrong token")
                writer.write(b"wrong token\r\n")
                await writer.drain()
                return False
            log.info("%s: TCP console client %s authenticated", self.name, ip)
            return True
        finally:
            ticket.release()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay = self
        try:
            if not await self._authenticate(reader, writer):
                writer.close()
                return
        except ConnectionError:
            writer.close()
            return

        class Tcp(ConsoleClient):
            async def send(self, data):
                writer.write(data)
                await writer.drain()

            async def close(self):
                writer.close()

        c = Tcp()
        try:
            pending = self.attach(c)
        except ConsoleBusy as e:
            writer.write(f"{e}\r\n".encode())
            await writer.drain()
            writer.close()
            return
        try:
            if pending:
                await c.send(pending)
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                await relay.write(data)
        except ConnectionError:
            pass
        finally:
            self.detach(c)
            writer.close()

    async def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
            self._budget.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._writer is not None:
            self._writer.close()
