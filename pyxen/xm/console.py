"""``xm console``: attach the terminal to a domain's console through xend.

The terminal is put in raw mode so the guest sees every key; Ctrl-]
detaches, as with Xen's xenconsole.  The connection is a websocket on
xend's API socket (the same endpoint the web console uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from urllib.parse import quote

import aiohttp

from .client import Client, XmError

ESCAPE = b"\x1d"   # Ctrl-]


@contextlib.contextmanager
def raw_terminal(fd: int):
    if not os.isatty(fd):
        yield
        return
    old = termios.tcgetattr(fd)
    try:
        # TCSANOW, not setraw's default TCSAFLUSH: what was typed while xm
        # was still connecting reaches the guest instead of being dropped.
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


async def _attach(client: Client, dom: str) -> None:
    conn = aiohttp.UnixConnector(path=client.sock)
    async with aiohttp.ClientSession(connector=conn) as session:
        try:
            ws = await session.ws_connect(f"http://xend/api/domains/{quote(dom, safe='')}/console",
                                          heartbeat=30)
        except aiohttp.WSServerHandshakeError as e:
            # The refusal's JSON body is not available here; re-ask for the message.
            try:
                client.get(f"/api/domains/{quote(dom, safe='')}")
            except XmError:
                raise
            raise XmError(f"cannot attach to the console of {dom}: "
                          f"{'it is in use by another client' if e.status == 409 else e.message}") from None
        except aiohttp.ClientConnectorError as e:
            raise client.connect_error(e.os_error) from None
        loop = asyncio.get_running_loop()
        out = sys.stdout.buffer
        stdin_fd = sys.stdin.fileno()
        done = asyncio.Event()

        def on_input():
            try:
                data = os.read(stdin_fd, 4096)
            except OSError:
                data = b""
            if not data:
                done.set()
                return
            if ESCAPE in data:
                data = data[:data.index(ESCAPE)]
                done.set()
            if data:
                loop.create_task(ws.send_bytes(data))

        async def pump():
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    out.write(msg.data)
                    out.flush()
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
            done.set()

        with raw_terminal(stdin_fd):
            loop.add_reader(stdin_fd, on_input)
            task = asyncio.create_task(pump())
            try:
                await done.wait()
            finally:
                loop.remove_reader(stdin_fd)
                task.cancel()
                await ws.close()
        if os.isatty(stdin_fd):
            out.write(b"\r\n")
            out.flush()


def attach(client: Client, dom: str) -> None:
    asyncio.run(_attach(client, dom))
