"""atheris (libFuzzer) harnesses for every parser that takes hostile input.

    python tests/fuzz/targets.py TARGET [libFuzzer options, e.g. -runs=2000 CORPUS_DIR]

Targets: sxp, xl (xl.cfg syntax -> DomainConfig.from_values), domconfig
(SXP -> DomainConfig.from_sxp -> SXP round trip), specs (disk, xl disk,
vif, pci, cpus, rate), xendconfig (xend-config.sxp), savefile (a save
file's header), relocation (what a migration peer sends, through the
relocation Link) and api (HTTP requests, JSON bodies and credentials through
xend's real aiohttp application with a stub that never starts QEMU: every
route and operation of the operation table, pyxen.ops.table).

Each input must end in a value or the parser's own clean error
(SxpError, ConfigError, ...); any other exception is a crash, and
libFuzzer's -timeout catches hangs.  tests/unit/test_fuzz.py runs every
target for a bounded number of inputs; ``make fuzz`` runs them long.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from pyxen.config import sxp, xmconfig
    from pyxen.config.domain import DomainConfig
    from pyxen.config.errors import ConfigError
    from pyxen.config import specs
    from pyxen.config.xendconfig import XendConfig, XendConfigError
    from pyxen.xend import relocproto, remotecreate, storagemigrate
    from pyxen.xend.errors import InvalidRequest

# ------------------------------------------------------------------ config


def fuzz_sxp(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        forms = sxp.parse(text)
    except sxp.SxpError:
        return
    # What was read writes back and reads back the same -- except the empty
    # string, which Xen writes bare and so reads back as nothing (sxp.py).
    for form in forms:
        if not _has_empty(form):
            assert sxp.from_string(sxp.to_string(form)) == form, form


def _has_empty(v) -> bool:
    return v == "" or (isinstance(v, list) and any(_has_empty(x) for x in v))


def fuzz_xl(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        values = xmconfig.parse_xl(text, "fuzz.cfg")
    except ConfigError:
        return
    try:
        DomainConfig.from_values(values)
    except ConfigError:
        pass


def fuzz_domconfig(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        cfg = DomainConfig.from_sxp(text)
    except (ConfigError, sxp.SxpError):
        return
    again = DomainConfig.from_sxp(sxp.to_string(cfg.to_sxp()))
    assert again.to_sxp() == cfg.to_sxp(), (cfg.to_sxp(), again.to_sxp())


def fuzz_specs(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 6)
    text = fdp.ConsumeUnicodeNoSurrogates(200)
    parse = (specs.parse_disk, specs.parse_xl_disk, specs.parse_vif, specs.parse_pci,
             specs.parse_cpuset, specs.parse_rate, specs.disk_number)[which]
    try:
        parse(text)
    except ConfigError:
        pass


def fuzz_xendconfig(data: bytes) -> None:
    try:
        XendConfig.parse(data.decode("utf-8", "replace"))
    except XendConfigError:
        pass


def fuzz_savefile(data: bytes) -> None:
    from pyxen.xend import checkpoint
    with open(SAVEFILE, "wb") as f:
        f.write(data)
    try:
        checkpoint.read_header(SAVEFILE)
    except checkpoint.SaveFileError:
        pass


# libFuzzer ends the process without running atexit: scratch files go in
# $TMPDIR, which the bounded test points at its own temporary directory.
SAVEFILE = os.path.join(tempfile.gettempdir(), f"pyxen-fuzz-savefile.{os.getpid()}")

# --------------------------------------------------------------------- api

API = None


class _ApiHarness:
    """xend's real Api application on a throw-away root, reached over TCP by
    an aiohttp client: routing, auth, JSON bodies and every handler's
    validation are the production code.  The registry holds one preserved
    (shut down, no QEMU) domain 'fz'; creating a domain stops after its
    config is validated (the accelerator refuses), and vnets are parsed and
    checked but never made."""

    TOKEN = "fuzz-token"

    def __init__(self):
        import asyncio
        import logging
        from pathlib import Path

        from aiohttp.test_utils import TestClient, TestServer

        from pyxen.paths import Paths
        from pyxen.filestore import FileStore
        from pyxen.xend.api import Api
        from pyxen.xend.domain import Domain
        from pyxen.xend.domains import Domains
        from pyxen.xend.errors import InvalidRequest
        from pyxen.xend.network import HostNetwork

        logging.disable(logging.CRITICAL)
        root = Path(tempfile.mkdtemp(prefix="pxfz"))
        os.environ["PYXEN_ROOT"] = str(root)
        # The PCI routes see an empty sysfs of their own, never the host's devices.
        for var, d in (("PYXEN_SYSFS", "sys"), ("PYXEN_DEVFS", "dev")):
            (root / d).mkdir()
            os.environ[var] = str(root / d)
        paths = Paths(root)
        for d in paths.layout():
            d.mkdir(parents=True, exist_ok=True)
        cfg = XendConfig()
        store = FileStore(paths.state)

        class NoAccel:
            async def get(self):
                raise InvalidRequest("fuzz: no domain is started")

        class NoNet(HostNetwork):
            def _apply(self, v):
                raise InvalidRequest("fuzz: no vnet is made")

        self.domains = Domains(paths, cfg, store, NoAccel(), NoNet(paths, cfg, store))
        dom = Domain(self.domains.services(), DomainConfig.from_values({"name": "fz", "kernel": "/k",
                                                                        "memory": 64}), 1)
        dom.load_state("shutdown")
        self.domains.by_uuid[dom.uuid] = dom
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        api = Api(self.domains, paths.xend_log, None, self.TOKEN)
        self.client = TestClient(TestServer(api.app()), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())

    def request(self, method: str, path: str, headers: dict, body: bytes):
        # Every input starts without the session cookie an earlier
        # POST /api/login may have left in the client's jar.
        self.client.session.cookie_jar.clear()

        async def go():
            async with self.client.request(method, path, headers=headers, data=body) as r:
                return r.status, r.headers.get("Content-Type", ""), await r.read()
        return self.loop.run_until_complete(go())


# Every route, operation name and parameter name of the operation table
# (pyxen.ops.table), plus a few the table does not know.
from pyxen.ops.table import OPS as _TABLE  # noqa: E402

# (not the endless event stream: covered by tests/system/test_api.py)
ROUTES = sorted({(o.method, o.path) for o in _TABLE if o.handler != "static" and o.fuzz != "stream"})
OPS = sorted({o.path.rsplit("/", 1)[1] for o in _TABLE if o.domain} - {"{op}"}) + ["nosuch"]
PUBLIC = {o.path for o in _TABLE if o.public}
KEYS = sorted({p.name for o in _TABLE for p in o.params} | {"mac", "bridge", "colour"})


def _value(fdp, depth: int = 0):
    kind = fdp.ConsumeIntInRange(0, 7 if depth < 2 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(8)
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind in (4, 5):
        return fdp.ConsumeUnicodeNoSurrogates(40)
    if kind == 6:
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return {fdp.PickValueInList(KEYS): _value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}


def fuzz_api(data: bytes) -> None:
    import json
    global API
    if API is None:
        API = _ApiHarness()
    fdp = atheris.FuzzedDataProvider(data)
    method, route = fdp.PickValueInList(ROUTES)
    dom = fdp.PickValueInList(["fz", "0", "1", "Domain-0", "nosuch"])
    fill = {"dom": dom, "vnet": dom, "host": dom,
            "op": fdp.PickValueInList(OPS), "cls": fdp.PickValueInList(["vbd", "vif", "pci", "vtpm"]),
            "dev": fdp.PickValueInList(["0", "1", "xvda"])}
    path = route.format(**fill)
    cred = fdp.ConsumeIntInRange(0, 3)
    headers = {}
    if cred:
        # (aiohttp's client will not send CR or LF in a header at all)
        bad = fdp.ConsumeUnicodeNoSurrogates(20).replace("\r", "").replace("\n", "")
        headers["Authorization"] = "Bearer " + (API.TOKEN if cred < 3 else bad)
    if fdp.ConsumeBool():
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
    else:
        obj = {fdp.PickValueInList(KEYS): _value(fdp) for _ in range(fdp.ConsumeIntInRange(0, 6))}
        if path.endswith("/login"):
            obj["token"] = API.TOKEN if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(20)
        body = json.dumps(obj).encode()
        headers["Content-Type"] = "application/json"
    status, ctype, payload = API.request(method, path, headers, body)
    if not cred or cred == 3:
        if route not in PUBLIC and path != "/api/openapi.json":
            # Refused: by xend (401), or by aiohttp for a malformed header (400).
            assert status == 401 or (status == 400 and b"Invalid header" in payload), \
                (method, path, status, payload[:300])
    assert status < 500, (method, path, body[:300], status, payload[:500])
    if "json" in ctype:
        json.loads(payload)


def fuzz_relocation(data: bytes) -> None:
    """What a peer can send the relocation server: bytes on the connection,
    read by xend's own Link (frames, control messages, the (receive ...)
    request and the domain config in it)."""
    import socket
    data = data[:60000]                  # fits a socketpair's buffer: no writer thread
    a, b = socket.socketpair()
    try:
        b.sendall(data)
        b.shutdown(socket.SHUT_WR)
        link = relocproto.Link(a, timeout=2)
        while True:
            try:
                msg = link.recv()
            except relocproto.ProtocolError:
                return
            try:
                relocproto.check_reply(msg)
            except (relocproto.ProtocolError, relocproto.PeerError):
                pass
            try:
                vm, _, _ = remotecreate.parse_request(msg)      # a create placed on this host
                DomainConfig.from_sxp(vm)
            except (relocproto.ProtocolError, ConfigError, sxp.SxpError):
                pass
            try:
                req = relocproto.parse_receive(msg)
            except relocproto.ProtocolError:
                continue
            try:
                DomainConfig.from_sxp(req.config)
            except (ConfigError, sxp.SxpError):
                pass
            if req.storage is not None:
                try:
                    storagemigrate.parse(req.storage)     # --copy-storage's disk list
                except InvalidRequest:
                    pass
    finally:
        a.close()
        b.close()


TARGETS = {"relocation": fuzz_relocation, "sxp": fuzz_sxp, "xl": fuzz_xl, "domconfig": fuzz_domconfig, "specs": fuzz_specs,
           "xendconfig": fuzz_xendconfig, "savefile": fuzz_savefile, "api": fuzz_api}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    if target is fuzz_api:
        with atheris.instrument_imports():
            import pyxen.xend.api  # noqa: F401  (coverage of the handlers)
    atheris.Setup([sys.argv[0]] + sys.argv[2:], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
