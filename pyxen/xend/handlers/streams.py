"""Long-lived responses: the server-sent event stream and the console websocket."""

from __future__ import annotations

import asyncio
import json

from aiohttp import WSMsgType, web

from ..console import ConsoleBusy, ConsoleClient
from ..errors import Conflict, InvalidRequest
from . import Call


async def events(call: Call):
    """Server-sent events: one 'event:' per domain change, a comment every 15 s."""
    domains = call.domains
    q: asyncio.Queue = asyncio.Queue(maxsize=1000)
    domains.subscribers.add(q)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await resp.prepare(call.request)
        await resp.write(b": pyxen xend events\n\n")
        while True:
            try:
                ev = await asyncio.wait_for(q.get(), 15)
            except asyncio.TimeoutError:
                await resp.write(b": keepalive\n\n")
                continue
            await resp.write(f"event: {ev['event']}\ndata: {json.dumps(ev)}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        domains.subscribers.discard(q)
    return resp


async def console(call: Call):
    ref, request = call.match("dom"), call.request
    if call.api.is_dom0(ref):
        raise InvalidRequest("Domain-0 has no console here; use the host's terminal")
    dom = call.domains.lookup(ref)
    if dom.console is None:
        raise Conflict(f"Domain {dom.name} has no console (state {dom.state})")
    relay = dom.console
    ws = web.WebSocketResponse(heartbeat=30)
    if not ws.can_prepare(request).ok:      # (found by schemathesis: was a text/plain 400)
        raise InvalidRequest(f"Domain {dom.name}'s console is a websocket: use xm console or the web page")

    class Ws(ConsoleClient):
        async def send(self, data):
            await ws.send_bytes(data)

        async def close(self):
            await ws.close()

    client = Ws()
    try:
        pending = relay.attach(client)
    except ConsoleBusy as e:
        raise Conflict(str(e)) from None
    try:
        await ws.prepare(request)
        if pending:
            await ws.send_bytes(pending)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await relay.write(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await relay.write(msg.data.encode())
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        relay.detach(client)
    return ws
