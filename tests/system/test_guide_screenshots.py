"""The web console screenshots of the user's guide, taken in real Chromium.

A real xend (TCP API on, token auth) with two real guests; Playwright logs
in through the page as a user does, waits for the domain list and for a
login prompt on a serial console, and writes the PNGs the guide shows
(docs/guide/pages/assets/images/web-*.png).  Run by `make test`, so the
pictures follow the page; commit them when they change.
"""

from __future__ import annotations

import re
import tempfile
import textwrap
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from conftest import Host
from pyxen.testing.browser import launch, wait_js
from pyxen.testing import guide
from pyxen.testing.ports import free_port

IMAGES = guide.PAGES / "assets" / "images"
PNG = b"\x89PNG\r\n\x1a\n"


def test_web_console_screenshots(image):
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="px", dir="/tmp"))
    h = Host(root, image, textwrap.dedent(f"""\
        (accel tcg)
        (xend-http-server yes)
        (xend-address localhost)
        (xend-port {port})
        """))
    try:
        h.xend("start")
        token = (root / "etc/xen/xend-http-token").read_text().strip()
        h.xm("create", str(h.config("web1", vcpus=2)))
        h.xm("create", "-p", str(h.config("db1", memory=96)))
        with sync_playwright() as pw:
            browser = launch(pw)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 560})
                page.goto(f"http://127.0.0.1:{port}/")
                page.fill("#token", token)
                page.click("#login")
                expect(page.locator("#main-view")).to_be_visible()
                expect(page.locator("#dom-db1 td.state")).to_have_text("--p---", timeout=60_000)
                expect(page.locator("#dom-web1")).to_be_visible()
                page.screenshot(path=str(IMAGES / "web-domains.png"))

                page.locator("#dom-web1 button.console").click()
                expect(page.locator("#console-view")).to_be_visible()
                term = page.locator("#terminal .xterm-helper-textarea")
                text = lambda: page.evaluate("window.pyxenConsoleText()")   # noqa: E731
                deadline = time.monotonic() + 180
                while not re.search(r"login: *$", text(), re.M):
                    assert time.monotonic() < deadline, f"no login prompt; console shows:\n{text()}"
                    term.focus()
                    page.keyboard.press("Enter")
                    try:
                        wait_js(page, "/login: *$/m.test(window.pyxenConsoleText())", timeout=5000)
                    except Exception:
                        pass
                term.focus()
                page.keyboard.type("root")
                page.keyboard.press("Enter")
                wait_js(page, "/# *$/m.test(window.pyxenConsoleText())", timeout=60_000)
                page.keyboard.type("uname -sm")
                page.keyboard.press("Enter")
                wait_js(page, "/^Linux x86_64/m.test(window.pyxenConsoleText())", timeout=60_000)
                page.screenshot(path=str(IMAGES / "web-console.png"), full_page=True)
            finally:
                browser.close()
    finally:
        h.cleanup()
    for name in ("web-domains.png", "web-console.png"):
        data = (IMAGES / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
