"""The pre-authentication budget (xend/preauth.py), the HTTP guard that
applies it (xend/httpguard.py) on a real aiohttp server on loopback, and
log redaction (xend/logsetup.py)."""

import asyncio
import logging
import socket

import pytest
from aiohttp import web

from pyxen.xend import httpguard, logsetup, preauth


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_caps_per_peer_and_total():
    b = preauth.Budget("t", logging.getLogger("t"), total=5, per_peer=2)
    a1, a2 = b.admit("10.0.0.1"), b.admit("10.0.0.1")
    assert a1 and a2 and b.admit("10.0.0.1") is None           # per peer
    others = [b.admit(f"10.0.0.{i}") for i in (2, 3, 4)]
    assert all(others) and b.held == 5
    assert b.admit("10.0.0.9") is None                         # total
    a1.release()
    a1.release()                                               # twice is harmless
    assert b.held == 4
    assert b.admit("10.0.0.9") is not None
    assert b.admit("10.0.0.1") is None                         # total again (5 held)


def test_refusals_are_rate_limited_per_peer_with_a_summary(caplog):
    clock = Clock()
    r = preauth.RefusalLog(logging.getLogger("t.r"), "relocation", every=60, clock=clock)
    with caplog.at_level(logging.WARNING, "t.r"):
        for i in range(40000):
            r.refused(f"192.0.2.{i % 4}", "connection closed")
        assert len(caplog.records) == 4                         # one line per peer
        assert r.pending == 40000 - 4
        clock.t += 61
        r.refused("192.0.2.0", "connection closed")
        lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 6
    assert "39996 more connection(s) from 4 address(es)" in lines[4]
    assert lines[5] == "relocation: refused a connection from 192.0.2.0: connection closed"
    assert r.pending == 0


def test_different_reasons_of_one_peer_are_each_logged(caplog):
    r = preauth.RefusalLog(logging.getLogger("t.k"), "x", clock=Clock(), refused_as="refused HTTPS connection")
    with caplog.at_level(logging.WARNING, "t.k"):
        for why in ("no client certificate", "plain HTTP on the HTTPS port", "no client certificate"):
            r.refused("127.0.0.1", why)
    assert [rec.getMessage() for rec in caplog.records] == [
        "refused HTTPS connection from 127.0.0.1: no client certificate",
        "refused HTTPS connection from 127.0.0.1: plain HTTP on the HTTPS port"]


def test_budget_threads_are_not_the_default_pool():
    async def main():
        b = preauth.Budget("t", logging.getLogger("t"), total=3)
        import threading
        names = await asyncio.gather(*[b.run(lambda: threading.current_thread().name) for _ in range(3)])
        b.close()
        return names
    assert all(n.startswith("preauth-t") for n in asyncio.run(main()))


# --------------------------------------------------------------- HTTP guard
async def _server(deadline=0.5, total=4, per_peer=2, max_body=100):
    async def login(request):
        body = await request.read()
        return web.json_response({"got": len(body)}, status=401)

    async def private(request):
        if request.headers.get("Authorization") != "Bearer ok":
            return web.json_response({"error": "no"}, status=401)
        return web.json_response({"ok": True})

    budget = preauth.Budget("api", logging.getLogger("t.api"), total=total, per_peer=per_peer,
                            deadline=deadline, max_body=max_body, refused_as="refused HTTP connection")
    guard = httpguard.Guard(budget)
    app = web.Application(middlewares=[guard.middleware], client_max_size=16 << 20)
    app.on_response_prepare.append(httpguard.security_headers)
    app.router.add_post("/api/login", login)
    app.router.add_get("/api/domains", private)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = httpguard.GuardedSite(runner, "127.0.0.1", 0, guard)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, port, budget


async def _request(port, raw: bytes, wait=5.0) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(raw)
    await w.drain()
    try:
        return await asyncio.wait_for(r.read(65536), wait)
    finally:
        w.close()


def test_half_sent_headers_are_cut_off_at_the_deadline():
    async def main():
        runner, port, budget = await _server(deadline=0.3)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /api/domains HTTP/1.1\r\nHost: x\r\n")   # and nothing more
        got = await asyncio.wait_for(r.read(), 10)              # closed by xend, not by us
        await asyncio.sleep(0.05)
        held = budget.held
        await runner.cleanup()
        return got, held
    got, held = asyncio.run(main())
    assert got == b"" and held == 0


def test_idle_connections_beyond_the_caps_are_closed_and_others_still_served():
    async def main():
        runner, port, budget = await _server(deadline=30, total=4, per_peer=4)
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await asyncio.sleep(0.1)
        over = await _request(port, b"GET /api/domains HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ok\r\n\r\n")
        for _, w in idle:
            w.close()
        await asyncio.sleep(0.1)
        after = await _request(port, b"GET /api/domains HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ok\r\n\r\n")
        await runner.cleanup()
        return over, after
    over, after = asyncio.run(main())
    assert over == b""                       # refused at once: no budget left
    assert b"200 OK" in after and b'"ok": true' in after


@pytest.mark.parametrize("head, status", [
    (b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 16777216\r\n\r\n", b"413"),
    (b"POST /api/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"411"),
    (b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + b"x" * 101, b"413"),
    (b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nxx", b"408"),
])
def test_bodies_before_authentication_are_small_and_prompt(head, status):
    async def main():
        runner, port, _ = await _server(deadline=0.5)
        got = await _request(port, head)
        await runner.cleanup()
        return got
    assert asyncio.run(main()).split(b"\r\n", 1)[0].split()[1] == status


def test_small_login_body_is_read_and_authenticated_connections_are_trusted():
    async def main():
        runner, port, budget = await _server(deadline=0.3)
        got = await _request(port, b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"a\":1}")
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /api/domains HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ok\r\n\r\n")
        first = await r.readuntil(b'{"ok": true}')
        await asyncio.sleep(0.8)             # past the deadline: a trusted connection stays
        w.write(b"GET /api/domains HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ok\r\n\r\n")
        second = await asyncio.wait_for(r.readuntil(b'{"ok": true}'), 5)
        held = budget.held
        w.close()
        await runner.cleanup()
        return got, first, second, held
    got, first, second, held = asyncio.run(main())
    assert b'"got": 7' in got
    assert b"X-Frame-Options: DENY" in first and b"frame-ancestors 'none'" in first
    assert second.startswith(b"HTTP/1.1 200") and held == 0


# ---------------------------------------------------------------- redaction
@pytest.mark.parametrize("text, secret", [
    ("dom: qmp set_password {'protocol': 'vnc', 'password': 'hunter22', 'connected': 'keep'}", "hunter22"),
    ('{"password": "hunter22"}', "hunter22"),
    ("(image (hvm (vncpasswd hunter22) (vnc 1)))", "hunter22"),
    ("(vncpasswd 'two words')", "two words"),
    ("vncpasswd = 'hunter22'", "hunter22"),
    ("Authorization: Bearer abcDEF123-_xyz789QRS", "abcDEF123"),
    ("token=s3cr3t&x=1", "s3cr3t"),
])
def test_secrets_never_reach_a_log_line(text, secret):
    assert secret not in logsetup.redact(text)


def test_prose_about_credentials_is_left_alone():
    for text in ("HTTPS API on TCP *:8000, bearer token required", "refused login from 1.2.3.4: bad token",
                 "no password set", "(xend-http-auth token)"):
        assert logsetup.redact(text) == text


def test_redactor_filters_arguments_at_debug(tmp_path):
    logfile = tmp_path / "xend.log"
    logsetup.setup_logging(str(logfile), "DEBUG")
    try:
        logging.getLogger("pyxen.domain.qmp").debug("%s: qmp %s %s", "vm", "set_password",
                                                    {"protocol": "vnc", "password": "hunter22"})
        for h in logging.getLogger().handlers:
            h.flush()
        text = logfile.read_text()
        assert "set_password" in text and "hunter22" not in text
        assert oct(logfile.stat().st_mode & 0o777) == oct(logsetup.LOG_MODE)
    finally:
        logging.getLogger().handlers[:] = []
