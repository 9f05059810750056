"""xend's HTTP API over HTTPS with a real xend and a real guest.

(xend-http-auth cert): only a client certificate signed by the pool's CA
(``pyxen cert NAME --client``) gets in; no certificate, one from another
CA, or plain HTTP are refused during the handshake and logged.
(xend-http-tls yes): HTTPS carrying the bearer token.  Missing certificate
files stop xend with one line naming the file and the command to make it.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from pyxen import pki
from pyxen.config import sxp, xmconfig
from pyxen.testing.browser import launch
from pyxen.testing.wait import poll
from pyxen.testing.ports import free_port

REFUSED = (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)


def tls_client(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def call(port, method, path, ctx=None, body=None, headers=None):
    if ctx is None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    else:
        # The host certificate was issued for localhost and 127.0.0.1: the name is checked.
        c = http.client.HTTPSConnection("localhost", port, timeout=120, context=ctx)
    try:
        h = {"Content-Type": "application/json", **(headers or {})}
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = c.getresponse()
        data = r.read()
    finally:
        c.close()
    return r.status, (json.loads(data) if "json" in (r.getheader("Content-Type") or "") else data.decode())


def log_of(h) -> str:
    return (h.root / "var/log/xen/xend.log").read_text()


def refused_and_logged(h, port, ctx, why: str) -> None:
    with pytest.raises(REFUSED):
        call(port, "GET", "/api/domains", ctx)
    poll(lambda: f"refused HTTPS connection from 127.0.0.1: {why}" in log_of(h), 30, what=f"refusal '{why}' logged")


def browser_page(port: int, user: Path) -> None:
    """The web page in headless Chromium: with the user's certificate it
    opens straight onto the domain list (no token); without, nothing loads."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright

    base = f"https://localhost:{port}"
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            # Chromium does not know the pool's CA: the server check is the Python client's job above.
            page = browser.new_context(ignore_https_errors=True, client_certificates=[{
                "origin": base, "certPath": str(user / "client-cert.pem"),
                "keyPath": str(user / "client-key.pem")}]).new_page()
            page.goto(base + "/")
            expect(page.locator("#main-view")).to_be_visible(timeout=60_000)
            expect(page.locator("#dom-tlsvm")).to_be_visible(timeout=60_000)
            expect(page.locator("#login-view")).to_be_hidden()
            anon = browser.new_context(ignore_https_errors=True).new_page()
            with pytest.raises(PlaywrightError):
                anon.goto(base + "/", timeout=60_000)
        finally:
            browser.close()


def test_https_api_with_client_certificates(make_host, tmp_path):
    port = free_port()
    h = make_host(f"(accel tcg)\n(xend-http-server yes)\n(xend-address localhost)\n(xend-port {port})\n"
                  "(xend-http-auth cert)\n", start=False)

    # No CA and no host certificate: xend does not start, and says what to run.
    res = h.xend("start", check=False)
    assert res.returncode != 0
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "etc/xen/pki/ca-cert.pem does not exist" in err and "pyxen ca" in err, err
    h.run("pyxen", "ca", check=True)
    res = h.xend("start", check=False)
    assert res.returncode != 0 and "host-cert.pem does not exist" in res.stderr
    assert "`pyxen cert NAME --ip ADDR`" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    h.run("pyxen", "cert", "localhost", "--ip", "127.0.0.1", check=True)
    h.xend("start")
    assert h.domains().keys() == {"Domain-0"}     # nothing half-started by the failed attempts

    # An API user's certificate, and one from a CA this pool does not trust.
    alice = tmp_path / "alice"
    assert h.run("pyxen", "cert", "alice", "--client", "--out", str(alice), check=True).stdout.strip() == \
        str(alice / "client-cert.pem")
    other = tmp_path / "other-ca"
    pki.make_ca(other, "another pool")
    pki.make_client_cert(other, "mallory", tmp_path / "mallory")
    ca = alice / "ca-cert.pem"
    good = tls_client(ca, alice / "client-cert.pem", alice / "client-key.pem")

    # Refused: no certificate, a certificate from another CA, plain HTTP.
    refused_and_logged(h, port, tls_client(ca), "no client certificate")
    refused_and_logged(h, port, tls_client(ca, tmp_path / "mallory/client-cert.pem",
                                           tmp_path / "mallory/client-key.pem"),
                       "client certificate not trusted")
    refused_and_logged(h, port, None, "plain HTTP on the HTTPS port")
    # A host certificate cannot be replaced by a user's: the server is checked too.
    with pytest.raises(ssl.SSLCertVerificationError):
        call(port, "GET", "/api/domains", tls_client(other / "ca-cert.pem", alice / "client-cert.pem",
                                                      alice / "client-key.pem"))

    # The good certificate: list, create a real guest, see it through xm, destroy it.
    status, doms = call(port, "GET", "/api/domains", good)
    assert status == 200 and [d["name"] for d in doms["domains"]] == ["Domain-0"]
    cfg, _ = xmconfig.load([str(h.config("tlsvm"))])
    status, res = call(port, "POST", "/api/domains", good, {"config": sxp.to_string(cfg.to_sxp())})
    assert status == 201 and res["name"] == "tlsvm", res
    status, doms = call(port, "GET", "/api/domains", good)
    assert [d["name"] for d in doms["domains"]] == ["Domain-0", "tlsvm"]
    assert "tlsvm" in h.domains() and h.qemu_pids()
    with h.console("tlsvm") as con:        # a real guest: it boots to its login prompt
        con.wait_login_prompt(240)
    browser_page(port, alice)
    assert call(port, "POST", "/api/domains/tlsvm/destroy", good)[0] == 200
    assert "tlsvm" not in h.domains()
    log = log_of(h)
    assert "HTTPS API on TCP localhost:%d, client certificate signed by the CA required" % port in log
    assert "POST /api/domains from 127.0.0.1 (client certificate alice)" in log
    assert "POST /api/domains/tlsvm/destroy from 127.0.0.1 (client certificate alice)" in log

    # The OpenAPI document says how to authenticate.
    status, doc = call(port, "GET", "/api/openapi.json", good)
    assert status == 200 and doc["x-mutualTLS"]["type"] == "mutualTLS" and doc["security"] == []

    # schemathesis against the document, through mutual TLS (host-wide resources).
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(doc))
    res = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", str(spec), "--base-url",
         f"https://localhost:{port}", "--request-tls-verify", str(ca),
         "--request-cert", str(alice / "client-cert.pem"), "--request-cert-key", str(alice / "client-key.pem"),
         "--checks", "all", "--hypothesis-database", "none", "--hypothesis-seed", "1", "--no-color",
         "--exclude-path-regex", r"({dom}|/api/events|^/api/domains)", "--hypothesis-max-examples", "10"],
        env=h.env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert "passed" in res.stdout and "/api/host" in res.stdout, res.stdout[-3000:]
    assert h.domains().keys() == {"Domain-0"}


def test_https_api_with_token(make_host, tmp_path):
    """(xend-http-tls yes): the token travels inside HTTPS; no client certificate is asked for."""
    port = free_port()
    h = make_host(f"(accel tcg)\n(xend-http-server yes)\n(xend-address localhost)\n(xend-port {port})\n"
                  "(xend-http-tls yes)\n", start=False)
    res = h.xend("start", check=False)
    assert res.returncode != 0 and "(xend-http-tls)" in res.stderr and "host-cert.pem does not exist" in res.stderr
    h.run("pyxen", "ca", check=True)
    h.run("pyxen", "cert", "localhost", "--ip", "127.0.0.1", check=True)
    h.xend("start")
    token = (h.root / "etc/xen/xend-http-token").read_text().strip()
    ctx = tls_client(h.root / "etc/xen/pki/ca-cert.pem")
    assert call(port, "GET", "/api/domains", ctx)[0] == 401
    status, doms = call(port, "GET", "/api/domains", ctx, headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and doms["domains"][0]["name"] == "Domain-0"
    refused_and_logged(h, port, None, "plain HTTP on the HTTPS port")
    log = log_of(h)
    assert "refused GET /api/domains from 127.0.0.1: no credentials" in log
    assert f"HTTPS API on TCP localhost:{port}, bearer token required" in log
