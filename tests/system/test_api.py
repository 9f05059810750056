"""xend's HTTP API on TCP: token authentication, operations on a real guest,
the event stream, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading

from pyxen.config import sxp, xmconfig
from pyxen.testing.ports import free_port


class Http:
    def __init__(self, port: int, token: str | None):
        self.port, self.token = port, token

    def call(self, method: str, path: str, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        ctype = r.getheader("Content-Type", "")
        return r.status, (json.loads(data) if "json" in ctype else data.decode())


def test_http_api_auth_ops_events_metrics_openapi(make_host):
    port = free_port()
    h = make_host(f"(accel tcg)\n(xend-http-server yes)\n(xend-address localhost)\n(xend-port {port})\n")
    token = (h.root / "etc/xen/xend-http-token").read_text().strip()
    assert (h.root / "etc/xen/xend-http-token").stat().st_mode & 0o077 == 0
    anon, bad, api = Http(port, None), Http(port, "wrong"), Http(port, token)

    assert anon.call("GET", "/api/domains")[0] == 401
    assert bad.call("POST", "/api/domains", {"config": "(vm)"})[0] == 401
    log = (h.root / "var/log/xen/xend.log").read_text()
    assert "refused GET /api/domains from 127.0.0.1: no credentials" in log
    assert "refused POST /api/domains from 127.0.0.1: bad token" in log

    # Follow the event stream while we work (through xm, over the Unix socket).
    ev = subprocess.Popen(["xm", "events", "--json", "-n", "4"], env=h.env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    assert ev.stderr.readline().startswith("# following xend events")   # subscribed: nothing missed
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(ev.stdout), daemon=True)
    reader.start()

    cfg, _ = xmconfig.load([str(h.config("web"))])
    status, res = api.call("POST", "/api/domains", {"config": sxp.to_string(cfg.to_sxp())})
    assert status == 201 and res["name"] == "web"
    status, doms = api.call("GET", "/api/domains")
    assert [d["name"] for d in doms["domains"]] == ["Domain-0", "web"]
    assert api.call("POST", "/api/domains/web/pause")[0] == 200
    assert api.call("GET", "/api/domains/web")[1]["state"] == "--p---"
    assert "web" in h.xm("list").stdout and h.domains()["web"]["state"] == "--p---"   # one implementation
    assert api.call("POST", "/api/domains/web/unpause")[0] == 200
    status, err = api.call("POST", "/api/domains/ghost/pause")
    assert status == 404 and err["code"] == "no_such_domain"
    status, err = api.call("POST", "/api/domains/web/frobnicate")
    assert status == 400 and "not implemented" in err["error"]

    status, text = api.call("GET", "/metrics")
    assert status == 200
    assert 'pyxen_domain_memory_bytes{domid="' in text and 'name="web"' in text
    assert "pyxen_domain_cpu_seconds_total" in text and "pyxen_domains 1.0" in text

    assert api.call("POST", "/api/domains/web/destroy")[0] == 200
    ev.wait(timeout=60)
    reader.join(timeout=10)
    events = [json.loads(x) for x in lines]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "created" and kinds[1:].count("changed") == 3, kinds
    assert any(e["state"] == "--p---" for e in events)

    status, doc = api.call("GET", "/api/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ("/api/domains", "/api/domains/{dom}/pause", "/api/domains/{dom}/mem-set", "/api/events", "/metrics"):
        assert path in doc["paths"], path
    assert doc["paths"]["/api/domains"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"] == ["config"]


def test_http_server_off_by_default(host):
    # No TCP listener unless xend-http-server is on.
    lines = open("/proc/net/tcp").read().splitlines()[1:]
    assert not any(ln.split()[1].endswith(":1F40") and ln.split()[3] == "0A" for ln in lines)  # 8000
