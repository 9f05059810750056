"""The web console's server side without QEMU: uploaded-config parsing,
browser sessions, the public/same-origin rules, and the VNC websocket relay
(against a stand-in RFB server, since no guest has a VNC display yet)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import make_mocked_request

from pyxen.xend import apispec
from pyxen.xend import web as webui
from pyxen.xend.errors import Conflict, InvalidRequest


def test_upload_xl_config_names_domain_after_file():
    cfg, notes = webui.config_from_upload('kernel = "/k"\nmemory = 64\nvcpus = 2\nfoo = 1\n', "dir/web1.cfg")
    assert (cfg.name, cfg.memory, cfg.vcpus, cfg.kernel) == ("web1", 64, 2, "/k")
    assert any("foo" in n for n in notes)


def test_upload_xl_config_own_name_wins():
    cfg, _ = webui.config_from_upload('name = "a"; kernel = "/k"', "b.cfg")
    assert cfg.name == "a"


def test_upload_sxp_config():
    cfg, notes = webui.config_from_upload('(vm (name s1) (memory 96) (image (linux (kernel /k))))', "x")
    assert (cfg.name, cfg.memory, notes) == ("s1", 96, [])


@pytest.mark.parametrize("text, message", [
    ('import os\nkernel = "/k"\n', "never runs Python"),
    ('kernel = "/k" + "x"\n', "never runs Python"),
    ('kernel = os.environ["K"]\n', "never runs Python"),
    ("def f(): pass\n", "never runs Python"),
    ("(vm (name\n", "invalid SXP"),
    ("   \n", "empty"),
])
def test_upload_refuses_python_and_junk(text, message):
    with pytest.raises(InvalidRequest) as e:
        webui.config_from_upload(text, "bad.cfg")
    assert message in str(e.value) and "bad.cfg" in str(e.value)
    assert "\n" not in str(e.value)


def test_sessions_expire_and_drop():
    s = webui.Sessions(ttl=60)
    sid = s.new()
    assert s.valid(sid) and not s.valid("forged") and not s.valid(None)
    s.drop(sid)
    assert not s.valid(sid)
    old = webui.Sessions(ttl=-1)
    assert not old.valid(old.new())


def test_public_paths_and_same_origin():
    assert webui.is_public(make_mocked_request("GET", "/"))
    assert webui.is_public(make_mocked_request("GET", "/ui/app.js"))
    assert webui.is_public(make_mocked_request("POST", "/api/login"))
    assert not webui.is_public(make_mocked_request("GET", "/api/domains"))
    assert not webui.is_public(make_mocked_request("POST", "/ui/app.js"))
    h = {"Host": "xend:8000"}
    assert webui.same_origin(make_mocked_request("GET", "/", headers=h))
    assert webui.same_origin(make_mocked_request("GET", "/", headers={**h, "Origin": "http://xend:8000"}))
    assert not webui.same_origin(make_mocked_request("GET", "/", headers={**h, "Origin": "http://evil"}))


def test_openapi_documents_web_routes():
    doc = apispec.openapi()
    assert doc["paths"]["/api/login"]["post"]["security"] == []
    assert "security" not in doc["paths"]["/api/domains"]["get"]          # the global one applies
    assert {"token": []} in doc["security"] and {"session": []} in doc["security"]
    assert doc["paths"]["/api/domains/from-file"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["required"] == ["file"]
    assert "/api/domains/{dom}/vnc" in doc["paths"]


def test_vnc_relay_pumps_both_ways():
    """noVNC's side is a websocket; the display's side a Unix socket speaking RFB."""
    async def main():
        sock = Path(tempfile.mkdtemp(prefix="pxv", dir="/tmp")) / "vnc.sock"
        got = asyncio.get_running_loop().create_future()

        async def rfb(reader, writer):      # a VNC server's first words, then echo one message
            writer.write(b"RFB 003.008\n")
            await writer.drain()
            got.set_result(await reader.readexactly(12))
            writer.close()

        server = await asyncio.start_unix_server(rfb, str(sock))

        async def handler(request):
            ws = web.WebSocketResponse(protocols=("binary",))
            return await webui.relay_vnc(request, ws, sock)

        app = web.Application()
        app.router.add_get("/vnc", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with ClientSession() as http:
                async with http.ws_connect(f"http://127.0.0.1:{port}/vnc", protocols=("binary",)) as ws:
                    assert ws.protocol == "binary"
                    msg = await asyncio.wait_for(ws.receive(), 10)
                    assert msg.data == b"RFB 003.008\n"
                    await ws.send_bytes(b"RFB 003.008\n")
                    assert await asyncio.wait_for(got, 10) == b"RFB 003.008\n"
                    # The display closing ends the browser's websocket too.
                    msg = await asyncio.wait_for(ws.receive(), 10)
                    assert msg.type.name in ("CLOSE", "CLOSED", "CLOSING")
                with pytest.raises(Conflict):       # no display there: a clear 409, not a traceback
                    await webui.relay_vnc(make_mocked_request("GET", "/vnc"), web.WebSocketResponse(),
                                          sock.with_name("none"))
        finally:
            await runner.cleanup()
            server.close()
    asyncio.run(main())
