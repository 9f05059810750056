"""The operation and command tables (pyxen/ops) against what xend and xm
really serve: every route and every xm command is described, every handler
resolves, validation is the same on both sides, and the job rules hold on a
domain that has a job in flight (no QEMU: a preserved domain in a throw-away
registry, reached through xend's real aiohttp application)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pyxen.ops import commands as cmdtable
from pyxen.ops import validate as opcheck
from pyxen.ops.table import BY_NAME, FUZZ_KINDS, OPS


# ------------------------------------------------------------ the tables
def test_every_aiohttp_route_is_in_the_table_and_back(tmp_path):
    api = _harness(tmp_path)[0]
    app = api.app()
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info()
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if route.method == "HEAD":      # aiohttp adds HEAD beside each GET
            continue
        served.add((route.method, path.rstrip("/") + "/" if "prefix" in info else path))
    described = {(o.method, o.path) for o in OPS}
    assert served == described


def test_every_handler_resolves():
    from pyxen.xend.handlers import resolve
    for o in OPS:
        if o.handler != "static":
            assert callable(resolve(o.handler)), o.name
    with pytest.raises(LookupError):
        resolve("pyxen.xend.handlers.host:nosuch")


def test_every_xm_command_is_in_the_table():
    from pyxen.xm.commands import COMMANDS
    assert list(COMMANDS) == [c.name for c in cmdtable.COMMANDS]
    for c in cmdtable.COMMANDS:
        assert c.help and c.args is not None, c.name
        assert all(o.help for o in c.opts), c.name
        assert bool(c.run) != bool(c.send), f"{c.name}: either code of its own or a pass-through"
        if c.op is not None:
            assert c.op in BY_NAME, (c.name, c.op)
        if c.send:
            op = BY_NAME[c.op]
            names = {p.name for p in op.params} | set(op.path_params)
            for word in [w for w, _, _ in c.words] + list(c.fixed):
                assert word in names, (c.name, word)
            for o in c.opts:
                assert o.param is None or o.param in names, (c.name, o.long)
    for old, new in cmdtable.DEPRECATED.items():
        assert new in cmdtable.BY_NAME and old not in cmdtable.BY_NAME


def test_every_parameter_is_documented_and_typed():
    names = [o.name for o in OPS]
    assert len(names) == len(set(names))
    for o in OPS:
        assert o.summary and o.fuzz in FUZZ_KINDS, o.name
        for p in o.params:
            assert p.help and p.type in ("string", "integer", "number", "boolean", "array", "vif"), (o.name, p)
        for b in o.beside:
            assert b in BY_NAME, (o.name, b)
        assert o.job == bool(o.beside), o.name


def test_network_attach_synopsis_names_every_vif_key():
    from pyxen.config.specs import VIF_KEYS
    syn = cmdtable.BY_NAME["network-attach"].args
    for k in VIF_KEYS:
        assert f"[{k}=" in syn, k


def test_xm_imports_nothing_of_xend():
    code = ("import sys; import pyxen.ops.table, pyxen.ops.commands, pyxen.ops.validate, pyxen.xm.commands;"
            "print(sorted(m for m in sys.modules if m.startswith(('pyxen.xend', 'pyxen.hypervisor', "
            "'pyxen.net', 'pyxen.storage', 'aiohttp'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -------------------------------------------------------------- OpenAPI
def test_openapi_documents_every_route():
    from pyxen.xend import apispec
    doc = apispec.openapi()
    ids = set()
    for o in OPS:
        if not o.documented:
            assert o.path not in doc["paths"]
            continue
        d = doc["paths"][o.path][o.method.lower()]
        assert d["operationId"] == o.name
        ids.add(d["operationId"])
        assert {p["name"] for p in d["parameters"] if p["in"] == "path"} == set(o.path_params)
    for path in ("/api/domains/{dom}/block-attach", "/api/domains/{dom}/block-detach", "/api/vnets",
                 "/api/vnets/{vnet}", "/api/domains/{dom}/devices/{cls}/{dev}"):
        assert path in doc["paths"], path
    assert doc["paths"]["/api/domains/{dom}/devices/{cls}"]["post"]["operationId"] == "device-attach"
    assert doc["paths"]["/api/domains/{dom}/save"]["post"]["x-long-job"] is True
    schema = doc["paths"]["/api/domains/{dom}/block-attach"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert schema["required"] == ["uname", "vdev", "mode"]


# ----------------------------------------------------------- validation
def test_validation_types_defaults_and_one_line_errors():
    v = opcheck.validate(BY_NAME["migrate"], {"host": "h", "port": "8002", "live": 1})
    assert v == {"host": "h", "port": 8002, "live": True, "resource": None, "downtime": None,
                 "copy_storage": None, "shared_disks": None}
    for body, msg in [({}, "'host' (the destination host (name or address)) is required"),
                      ({"host": "h", "port": "x"}, "port must be an integer, got 'x'"),
                      ({"host": "h", "port": 70000}, "port must be 1-65535, got 70000"),
                      ({"host": "h", "resource": "0"}, "resource must be a positive number, got 0"),
                      ({"host": "h", "downtime": 1e400}, "downtime must be an integer, got inf"),
                      ({"host": ["h"]}, "host must be a string, got ['h']")]:
        with pytest.raises(opcheck.OpError) as e:
            opcheck.validate(BY_NAME["migrate"], body)
        assert str(e.value) == msg and "\n" not in msg
    with pytest.raises(opcheck.OpError, match="reason must be one of poweroff, halt, reboot, got 'nap'"):
        opcheck.validate(BY_NAME["shutdown"], {"reason": "nap"})
    assert opcheck.validate(BY_NAME["shutdown"], {})["reason"] == "poweroff"
    assert opcheck.validate(BY_NAME["block-attach"], {"uname": "file:/x", "vdev": "xvdb", "mode": "w"})[
        "backend"] == "0"


@pytest.mark.parametrize("config,ok", [
    ({"bridge": "xenbr0", "policy": "p", "label": "l", "be_mac": "00:16:3e:00:00:01"}, True),
    ({"colour": "red"}, False), ({"bridge": "a,mac=00:16:3e:00:00:01"}, False), ({"mac": "zz"}, False),
    ("bridge=x", False)])
def test_vif_settings_one_grammar_for_xm_and_xend(config, ok):
    # The keys xm once refused (policy, label, be_mac) are the API's too.
    if ok:
        assert opcheck.validate(BY_NAME["device-attach"], {"config": config})["config"] == config
    else:
        with pytest.raises(opcheck.OpError):
            opcheck.validate(BY_NAME["device-attach"], {"config": config})


def test_xm_checks_before_sending_what_xend_checks_on_receipt(tmp_path):
    """The same bad value gives the same line from xm (nothing sent) and from xend (HTTP 400)."""
    from pyxen.paths import Paths
    from pyxen.xm.client import XmError
    from pyxen.xm.commands import COMMANDS, Context

    class NoSend:
        def __getattr__(self, name):
            raise AssertionError("xm sent a request it should have refused")

    ctx = Context(name="x", paths=Paths(tmp_path), _client=NoSend())
    cases = [("mem-set", ["fz", "5x"], None, None),          # xm's own size reader
             ("vcpu-set", ["fz", "many"], "vcpu-set", {"vcpus": "many"}),
             ("network-attach", ["fz", "colour=red"], "device-attach", {"config": {"colour": "red"}}),
             ("network-attach", ["fz", "mac=zz"], "device-attach", {"config": {"mac": "zz"}})]
    api_errors = _call(tmp_path, [(op, body) for _, _, op, body in cases if op])
    for (cmd, args, op, _), expect in zip([c for c in cases if c[2]], api_errors):
        with pytest.raises(XmError) as e:
            COMMANDS[cmd].run(ctx, {}, args)
        assert str(e.value) == expect, (cmd, expect)
    with pytest.raises(XmError, match="Invalid memory size: '5x'"):
        COMMANDS["mem-set"].run(ctx, {}, ["fz", "5x"])


# ------------------------------------------------------------ job rules
def test_operations_beside_a_job(tmp_path):
    """While a save runs, only the operations the table lists beside it get
    past the busy check; every other domain operation is refused as busy."""
    bodies = {"sysrq": {"key": "s"}, "qemu-monitor": {"command": "info status"}, "rename": {"name": "fz2"},
              "mem-set": {"memory": 64}, "mem-max": {"memory": 64}, "vcpu-set": {"vcpus": 1},
              "vcpu-pin": {"vcpu": "0", "cpus": "0"}, "save": {"file": "/tmp/x"}, "migrate": {"host": "h"},
              "pci-attach": {"dev": "00:01.0"}, "pci-detach": {"dev": "00:01.0"},
              "block-attach": {"uname": "file:/x", "vdev": "xvdb", "mode": "w"}, "block-detach": {"dev": "xvda"},
              "sched-credit": {"weight": 5}, "snapshot-create": {"name": "s"}, "snapshot-revert": {"name": "s"},
              "snapshot-delete": {"name": "s"}}
    # (rename last: it succeeds beside the job, and the name changes)
    ops = sorted((o for o in OPS if o.domain and o.name != "unknown-op"), key=lambda o: o.name == "rename")
    beside = set(BY_NAME["save"].beside)
    results = _call(tmp_path, [(o.name, bodies.get(o.name, {})) for o in ops], job={"op": "save"})
    for o, err in zip(ops, results):
        busy = "is busy: save in progress" in (err or "")
        assert busy == (o.name not in beside), (o.name, err)


# ------------------------------------------------------------- harness
def _harness(root: Path, job: dict | None = None):
    from pyxen.config.domain import DomainConfig
    from pyxen.config.xendconfig import XendConfig
    from pyxen.paths import Paths
    from pyxen.filestore import FileStore
    from pyxen.xend.api import Api
    from pyxen.xend.domain import Domain
    from pyxen.xend.domains import Domains
    from pyxen.xend.errors import InvalidRequest
    from pyxen.xend.network import HostNetwork

    paths = Paths(root)
    for d in paths.layout():
        d.mkdir(parents=True, exist_ok=True)
    cfg, store = XendConfig.parse("(xend-relocation-tls no)"), FileStore(paths.state)

    class NoAccel:
        async def get(self):
            raise InvalidRequest("test: no domain is started")

    domains = Domains(paths, cfg, store, NoAccel(), HostNetwork(paths, cfg, store))
    dom = Domain(domains.services(), DomainConfig.from_values({"name": "fz", "kernel": "/k", "memory": 64}), 1)
    dom.state = "running"
    dom.job = job
    domains.by_uuid[dom.uuid] = dom
    return Api(domains, paths.xend_log, None, None), dom


def _call(root: Path, calls: list[tuple[str, dict]], job: dict | None = None) -> list[str | None]:
    """POST each (op, body) to domain fz; the error line of each answer (None for success)."""
    from aiohttp.test_utils import TestClient, TestServer

    api, _ = _harness(root, job)

    async def go():
        out = []
        async with TestClient(TestServer(api.app())) as client:
            for name, body in calls:
                o = BY_NAME[name]
                path = o.path.format(dom="fz", cls="vif", dev="0")
                async with client.request(o.method, path, json=body) as r:
                    doc = json.loads(await r.read() or b"{}")
                    assert r.status < 500 or name in ("qemu-monitor",), (name, r.status, doc)
                    if r.status >= 400:
                        assert r.status in (400, 404, 409, 500), (name, r.status)
                    out.append(doc.get("error") if r.status >= 400 else None)
        return out
    return asyncio.run(go())


def test_a_body_read_before_the_handler_still_counts(tmp_path):
    """A middleware that reads the body first (the pre-auth guard does, for
    /api/login) leaves it cached: the operation still gets its parameters."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    api, _ = _harness(tmp_path)
    api.token = "good"

    @web.middleware
    async def read_first(request, handler):
        await request.read()
        return await handler(request)

    async def go():
        app = api.app()
        app.middlewares.insert(0, read_first)
        async with TestClient(TestServer(app)) as client:
            async with client.post("/api/login", json={"token": "wrong"}) as r:
                return r.status
    assert asyncio.run(go()) == 401
