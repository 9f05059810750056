"""xend's web console in a real browser (Debian's headless Chromium driven by
Playwright) against a running xend with a real guest, and schemathesis
against the OpenAPI document that xend serves.

One xend (TCP API on, token auth) serves the whole module; the browser test
boots the only fully booted guest, the schemathesis test adds a paused one.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import Host

from pyxen.testing.browser import launch, wait_js
from pyxen.testing.ports import free_port


def call(port, method, path, headers=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


@pytest.fixture(scope="module")
def web_host(image):
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="px", dir="/tmp"))
    h = Host(root, image, textwrap.dedent(f"""\
        (accel tcg)
        (xend-http-server yes)
        (xend-address localhost)
        (xend-port {port})
        """))
    h.port = port
    try:
        h.xend("start")
        h.token = (root / "etc/xen/xend-http-token").read_text().strip()
        yield h
    finally:
        h.cleanup()


def test_web_console_in_browser(web_host, tmp_path):
    h, port = web_host, web_host.port
    base = f"http://127.0.0.1:{port}"
    kernel = json.loads((h.image / "manifest.json").read_text())["kernel_version"]

    # Unauthenticated requests are refused: API, event stream, console websocket.
    assert call(port, "GET", "/api/domains")[0] == 401
    assert call(port, "GET", "/api/events")[0] == 401
    ws_headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    assert call(port, "GET", "/api/domains/x/console", ws_headers)[0] == 401
    assert call(port, "GET", "/api/domains", {"Cookie": "xend_session=forged"})[0] == 401
    assert call(port, "POST", "/api/login", {"Content-Type": "application/json"},
                json.dumps({"token": "wrong"}))[0] == 401
    # The page itself is public (it holds no secrets) and ships its own bundles.
    assert call(port, "GET", "/ui/vendor/xterm.js")[0] == 200
    assert call(port, "GET", "/ui/vendor/novnc.js")[0] == 200

    # An xl.cfg KEY=VALUE file to upload, and a Python one xend must refuse.
    good = tmp_path / "webvm.cfg"
    good.write_text(f'kernel = "{h.image}/vmlinuz"\nramdisk = "{h.image}/initrd.img"\nmemory = 128\n')
    bad = tmp_path / "python.cfg"
    bad.write_text(f'import os\nkernel = os.path.join("{h.image}", "vmlinuz")\n')

    with sync_playwright() as pw:
        # (launch() gives Chromium a fresh temporary profile of its own)
        browser = launch(pw)
        try:
            context = browser.new_context()
            page = context.new_page()
            requests_seen: list[str] = []
            page.on("request", lambda r: requests_seen.append(r.url))
            page.goto(base + "/")

            # Login: a wrong token is refused, the right one opens the list.
            expect(page.locator("#login-view")).to_be_visible()
            page.fill("#token", "wrong")
            page.click("#login")
            expect(page.locator("#login-error")).to_contain_text("wrong token")
            page.fill("#token", h.token)
            page.click("#login")
            expect(page.locator("#main-view")).to_be_visible()
            expect(page.locator("#dom-Domain-0 td.state")).to_have_text("r-----")

            # Create from uploaded configs: Python is refused with a clear message.
            page.set_input_files("#config-file", str(bad))
            page.click("#create")
            expect(page.locator("#message")).to_contain_text("never runs Python")
            assert "python" not in h.xm("list").stdout
            page.set_input_files("#config-file", str(good))
            page.click("#create")
            expect(page.locator("#message")).to_contain_text("created webvm", timeout=120_000)
            row = page.locator("#dom-webvm")
            expect(row).to_be_visible()
            assert "webvm" in h.domains()

            # A domain created elsewhere (xm) appears live, from the event
            # stream, and goes when destroyed.
            h.xm("create", "-p", str(h.config("other")))
            expect(page.locator("#dom-other td.state")).to_have_text("--p---", timeout=60_000)
            h.xm("destroy", "other")
            expect(page.locator("#dom-other")).to_have_count(0, timeout=60_000)

            # Pause and unpause with the buttons; xm sees the same state.
            row.locator("button.pause").click()
            expect(row.locator("td.state")).to_have_text("--p---", timeout=30_000)
            assert h.domains()["webvm"]["state"] == "--p---"
            row.locator("button.unpause").click()
            expect(row.locator("td.state")).not_to_have_text("--p---", timeout=30_000)
            assert h.domains()["webvm"]["state"] != "--p---"

            # The serial console: login prompt, log in, uname -a.
            row.locator("button.console").click()
            expect(page.locator("#console-view")).to_be_visible()
            term = page.locator("#terminal .xterm-helper-textarea")
            screen = lambda: page.evaluate("window.pyxenConsoleText()")   # noqa: E731

            def shows(pattern: str, seconds: float, fail: bool = True) -> bool:
                # Polled from here: the page's CSP (script-src 'self') refuses
                # the eval that Playwright's wait_for_function uses.
                end = time.monotonic() + seconds
                while not re.search(pattern, screen(), re.M):
                    if time.monotonic() > end:
                        assert not fail, f"console never showed {pattern!r}:\n{screen()}"
                        return False
                    time.sleep(0.2)
                return True
            deadline = time.monotonic() + 180
            while not re.search(r"login: *$", screen(), re.M):
                assert time.monotonic() < deadline, f"no login prompt; console shows:\n{screen()}"
                term.focus()
                page.keyboard.press("Enter")    # the prompt may have scrolled past before we attached
                shows(r"login: *$", 5, fail=False)
            term.focus()
            page.keyboard.type("root")
            page.keyboard.press("Enter")
            shows(r"# *$", 60)
            page.keyboard.type("uname -a")
            page.keyboard.press("Enter")
            pattern = rf"^Linux \S+ {re.escape(kernel)} .*x86_64"
            shows(pattern, 60)
            assert re.search(pattern, screen(), re.M)
            page.click("#console-close")

            # The screen page: noVNC is loaded from xend; a PV guest has no display.
            vnc = context.new_page()     # same session cookie
            vnc.goto(f"{base}/ui/vnc.html?dom=webvm")
            expect(vnc.locator("#status")).to_contain_text("has no VNC display")
            assert vnc.evaluate("typeof PyxenRFB") == "function"
            vnc.close()

            # Nothing was fetched from anywhere but xend.
            assert all(u.startswith(base) for u in requests_seen), requests_seen

            # Logging out ends the session: the page asks for the token again.
            page.click("#logout")
            expect(page.locator("#login-view")).to_be_visible()
            assert page.evaluate("fetch('/api/domains').then(r => r.status)") == 401
        finally:
            browser.close()
    log = (h.root / "var/log/xen/xend.log").read_text()
    assert "refused login from 127.0.0.1: bad token" in log
    assert "refused GET /api/domains from 127.0.0.1: unknown or expired session" in log


def test_snapshots_page_in_browser(web_host):
    """A domain's snapshots on the page: take, list, refuse a duplicate, revert, delete."""
    h, base = web_host, f"http://127.0.0.1:{web_host.port}"
    h.xm("create", str(h.config("websnap")))
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            try:
                page = browser.new_page()
                page.goto(base + "/")
                page.fill("#token", h.token)
                page.click("#login")
                row = page.locator("#dom-websnap")
                expect(row).to_be_visible(timeout=60_000)
                row.locator("button.snapshots").click()
                expect(page.locator("#snapshots-view")).to_be_visible()
                page.fill("#snapshot-name", "w1")
                page.click("#snapshot-create")
                expect(page.locator("#message")).to_contain_text("snapshot w1 taken", timeout=120_000)
                snap = page.locator("#snap-w1")
                expect(snap.locator("td.kind")).to_have_text("memory")
                expect(snap.locator("td.name")).to_have_text("w1 *")
                assert "w1" in h.xm("snapshot-list", "websnap").stdout
                page.fill("#snapshot-name", "w1")
                page.click("#snapshot-create")
                expect(page.locator("#message")).to_contain_text("already has a snapshot named 'w1'")
                snap.locator("button.revert").click()
                expect(page.locator("#message")).to_contain_text("reverted to w1", timeout=120_000)
                page.locator("#snap-w1 button.delete").click()
                expect(page.locator("#message")).to_contain_text("deleted w1")
                expect(page.locator("#snap-w1")).to_have_count(0)
                assert "w1" not in h.xm("snapshot-list", "websnap").stdout
            finally:
                browser.close()
    finally:
        h.xm("destroy", "websnap", check=False)


def test_hvm_screen_in_browser(web_host, hvm_media):
    """An HVM guest's screen in the page: noVNC through xend's relay to the
    domain's own (Unix-socket) VNC display, drawn on the canvas."""
    h, port = web_host, web_host.port
    base = f"http://127.0.0.1:{port}"
    disk = h.root / "webhvm.img"
    disk.write_bytes(hvm_media["disk"].read_bytes())
    cfg = h.root / "etc/xen/webhvm"
    cfg.write_text(f"name = 'webhvm'\nbuilder = 'hvm'\nkernel = '/usr/lib/xen/boot/hvmloader'\n"
                   f"memory = 128\ndisk = ['file:{disk},ioemu:hda,w']\nserial = 'pty'\n")
    h.xm("create", str(cfg))
    try:
        # The guest's kernel is writing on its text screen once SYSLINUX ran.
        with h.console("webhvm") as con:
            con.wait_login_prompt(180)
        with sync_playwright() as pw:
            browser = launch(pw)
            try:
                context = browser.new_context()
                page = context.new_page()
                page.goto(base + "/")
                page.fill("#token", h.token)
                page.click("#login")
                expect(page.locator("#main-view")).to_be_visible()
                expect(page.locator("#dom-webhvm")).to_be_visible(timeout=30_000)
                vnc = context.new_page()
                vnc.goto(f"{base}/ui/vnc.html?dom=webhvm")
                expect(vnc.locator("#status")).to_have_text("connected", timeout=30_000)
                # A VGA text screen (720x400) or more, and not blank: the
                # kernel's messages are light text on black.
                wait_js(vnc, "document.querySelector('#screen canvas') && "
                                      "document.querySelector('#screen canvas').width >= 640",
                                      timeout=30_000)
                wait_js(vnc, """() => {
                    const c = document.querySelector('#screen canvas');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let lit = 0;
                    for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 200) lit++;
                    return lit > 500;
                }""", timeout=60_000)
            finally:
                browser.close()
    finally:
        h.xm("destroy", "webhvm", check=False)


def schemathesis(h, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"http://127.0.0.1:{h.port}/api/openapi.json",
         "-H", f"Authorization: Bearer {h.token}", "--checks", "all", "--hypothesis-database", "none",
         "--hypothesis-seed", "1", "--no-color", *args],
        env=h.env, capture_output=True, text=True, timeout=240)


def schemathesis_runs() -> list[list[str]]:
    """The runs, from the operation table (each operation's ``fuzz``): every
    documented operation is in exactly one, except the endless event stream
    (tests/system/test_api.py follows it)."""
    from pyxen.ops.table import OPS

    def ops(kind):
        return [a for o in OPS if o.documented and o.fuzz == kind for a in ("--include-operation-id", o.name)]
    return [
        # The domain's own resources and safe operations on the real guest.
        ops("guest") + ["--set-path", "dom=fuzz", "--set-path", "cls=vbd", "--hypothesis-max-examples", "15"],
        # Operations that end or reshape a guest (destroy, shutdown, sysrq,
        # rename, mem-set, block-detach ...): random domain references like
        # "1" would hit the real guests, so they go to one that does not exist.
        ops("absent") + ["--set-path", "dom=nosuch", "--set-path", "cls=vbd", "--hypothesis-max-examples", "10"],
        # Host-wide resources and login/logout.
        ops("host") + ["--hypothesis-max-examples", "15"],
        # Creation and restore with random configs (SXP and uploaded files).
        ops("create") + ["--hypothesis-max-examples", "25"],
        # Only invalid requests where a valid one would change the host (a
        # vnet is a bridge and a VXLAN interface on it).
        ops("negative") + ["--data-generation-method", "negative", "--hypothesis-max-examples", "15"],
    ]


def test_schemathesis_runs_cover_every_route():
    from pyxen.ops.table import OPS
    covered = [a for run in schemathesis_runs() for i, a in enumerate(run) if run[i - 1] == "--include-operation-id"]
    assert sorted(covered) == sorted(o.name for o in OPS if o.documented and o.fuzz != "stream")


def test_schemathesis_openapi(web_host):
    """Every documented operation that is safe to fuzz, against a real (paused) guest.

    Creation gets random configs and must never leave a domain behind; the
    guest is neither destroyed nor reshaped.
    """
    h = web_host
    h.xm("create", "-p", str(h.config("fuzz")))
    before = set(h.domains())
    for args in schemathesis_runs():
        res = schemathesis(h, *args)
        assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
        assert "passed" in res.stdout and "ignored_auth" in res.stdout
    assert set(h.domains()) == before    # nothing half-created, nothing destroyed
    assert h.domains()["fuzz"]["state"] in ("--p---", "-b----", "r-----")
    h.xm("destroy", "fuzz")


def test_novnc_page_through_relay_to_qemu_vnc(tmp_path):
    """noVNC (as bundled by make web) through xend's VNC relay to a real QEMU VNC server.

    The relay alone, without xend (test_hvm_screen_in_browser covers a real
    HVM domain): the page and the relay are served here by a minimal aiohttp
    app using xend's own static files and relay_vnc; the display is a stopped
    (-S) QEMU with a standard VGA card and its VNC server on a Unix socket.
    """
    import asyncio
    import threading

    from aiohttp import web

    from pyxen.xend import web as webui

    sock = tmp_path / "vnc.sock"
    qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-nodefaults",
                             "-vga", "std", "-display", "none", "-vnc", f"unix:{sock}", "-S"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port = free_port()

    async def vnc(request):
        ws = web.WebSocketResponse(protocols=("binary",))
        if not ws.can_prepare(request).ok:
            return web.json_response({"display": "vnc"})
        return await webui.relay_vnc(request, ws, sock)

    async def serve():
        app = web.Application()
        app.router.add_static("/ui/", webui.STATIC)
        app.router.add_get("/api/domains/{dom}/vnc", vnc)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        started.set()
        return runner

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()),
                              daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert qemu.poll() is None, qemu.stderr.read().decode()
            assert time.monotonic() < deadline, "QEMU's VNC socket did not appear"
            time.sleep(0.05)
        assert started.wait(30)
        with sync_playwright() as pw:
            browser = launch(pw)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/ui/vnc.html?dom=hvm")
                expect(page.locator("#status")).to_have_text("connected", timeout=30_000)
                # noVNC sized its canvas from the server's framebuffer (VGA: 640x480 or more).
                wait_js(page, "document.querySelector('#screen canvas') && "
                                       "document.querySelector('#screen canvas').width >= 640",
                                       timeout=30_000)
            finally:
                browser.close()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        qemu.kill()
        qemu.wait()
