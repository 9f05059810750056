"""The HVM firmware and display feature (xend's side of HVM domains): what
is decided at start (display, firmware variable store), what is asked of
QEMU once it runs (VNC password and port), the device-model monitor, and
what a save must record.  (The config's HVM options are checked in
pyxen.config.hvmopts, QEMU's HVM arguments built in pyxen.hypervisor.qemu.hvmargv.)

The domain reaches these through :class:`HvmFeature`'s hooks (hooks.py)
with a :class:`~pyxen.xend.hooks.FeatureContext`, never the Domain itself.

The OVMF variable store (UEFI boot entries and settings) is the domain's
state: it lives in the store under ``nvram/<uuid>`` — kept, like libvirt's
per-domain NVRAM, across destroy and re-create of the same UUID — and is
copied to a file in the domain's run directory for QEMU while it runs.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from .. import storekeys
from ..config import hvmopts as hvmcfg
from ..hypervisor.qemu import hvmargv as qhvm
from ..hypervisor.qemu.monitor import QMPError
from . import monitorfilter, screendump, vnctls
from .errors import Conflict, InvalidRequest, XendError
from .hooks import Feature, FeatureContext

if TYPE_CHECKING:
    from ..hypervisor.qemu.argv import Runtime

log = logging.getLogger("pyxen.domain")


def nvram_key(uuid: str) -> str:
    return storekeys.nvram(uuid)


def prepare(dom: FeatureContext, rt: "Runtime") -> qhvm.HvmFacts:
    """The HvmFacts of this start; writes the OVMF variable file if needed.
    Raises XendError for what the host cannot give (no X display for SDL,
    no OVMF)."""
    h, conf = dom.cfg.hvm, dom.config
    if h.get("device_model"):
        log.info("%s: device_model=%s ignored: QEMU is the device model", dom.name, h["device_model"])
    facts = qhvm.HvmFacts(
        vnc_listen=str(h.get("vnclisten") or conf["vnc-listen"] or "127.0.0.1"),
        vnc_display=int(h["vncdisplay"]) if h.get("vncdisplay") is not None else dom.domid % 100,
        vnc_unused=bool(h.get("vncunused", 1)),
        vnc_password=bool(vnc_password(dom)),
        keymap=str(h.get("keymap") or conf["keymap"] or ""))
    if conf["vnc-tls"] and hvmcfg.graphics(h) and hvmcfg.vnc_wanted(h):
        facts.vnc_tls_dir = vnctls.prepare(conf, dom.paths.etc, rt.run_dir, dom.qemu_ident)
        facts.vnc_tls_verify = bool(conf["vnc-x509-verify"])
    if hvmcfg.sdl_wanted(h):
        display = h.get("display") or os.environ.get("DISPLAY")
        if not display:
            raise InvalidRequest(f"sdl=1 for domain {dom.name}, but there is no X display: xend has no "
                                 "$DISPLAY and the config sets no display= (use vnc=1 instead)")
        facts.env = dict(os.environ, DISPLAY=str(display))
        if h.get("xauthority"):
            facts.env["XAUTHORITY"] = str(h["xauthority"])
        facts.sdl = True
    if h.get("firmware") == "ovmf":
        for f in (qhvm.OVMF_CODE, qhvm.OVMF_VARS):
            if not f.is_file():
                raise XendError(f"UEFI firmware {f} is missing: apt-get install ovmf")
        data = dom.store.get(nvram_key(dom.uuid))
        if data is None:
            data = qhvm.OVMF_VARS.read_bytes()
        facts.nvram = rt.run_dir / "ovmf-vars.fd"
        fd = os.open(facts.nvram, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return facts


def vnc_password(dom: FeatureContext) -> str:
    pw = dom.cfg.hvm.get("vncpasswd")
    if pw is None:
        pw = dom.config["vncpasswd"]
    return str(pw or "")


async def after_start(dom: FeatureContext) -> None:
    """QEMU runs (the guest not yet): set the VNC password, learn the port."""
    if dom.cfg.builder != "hvm":
        return
    pw = vnc_password(dom)
    if pw and hvmcfg.vnc_wanted(dom.cfg.hvm):
        await dom.monitor.set_vnc_password(pw[:8], qhvm.VNC_TCP_ID)
    await query_vnc(dom)


async def query_vnc(dom: FeatureContext) -> None:
    dom.vnc = None
    if dom.cfg.builder != "hvm" or not hvmcfg.vnc_wanted(dom.cfg.hvm):
        return
    for server in await dom.monitor.vnc_servers():
        if server.get("id") != qhvm.VNC_TCP_ID:
            continue
        for s in server.get("server", []):
            if s.get("family") in ("ipv4", "ipv6") and not s.get("websocket"):
                dom.vnc = {"host": s["host"], "port": int(s["service"])}
                log.info("%s: VNC on %s:%d (display %d)", dom.name, s["host"], dom.vnc["port"],
                         dom.vnc["port"] - 5900)
                return


def keep_nvram(dom: FeatureContext) -> None:
    """QEMU has stopped: the variable file goes back into the store."""
    if dom.cfg.builder != "hvm" or dom.cfg.hvm.get("firmware") != "ovmf" or dom.shadow:
        return
    path = dom.run_dir / "ovmf-vars.fd"
    try:
        data = path.read_bytes()
    except OSError:
        return
    try:
        dom.store.put(nvram_key(dom.uuid), data)
    except Exception as e:
        log.error("%s: cannot keep the UEFI variable store: %s", dom.name, e)


def nvram_now(dom: FeatureContext) -> bytes:
    """The UEFI variable store as QEMU has it now (a migration takes it along)."""
    if dom.cfg.builder != "hvm" or dom.cfg.hvm.get("firmware") != "ovmf":
        return b""
    try:
        return (dom.run_dir / "ovmf-vars.fd").read_bytes()
    except OSError:
        return dom.store.get(nvram_key(dom.uuid)) or b""


def save_meta(dom: FeatureContext) -> dict:
    """What a restore must match: the firmware (and OVMF's flash size)."""
    if dom.cfg.builder != "hvm":
        return {}
    meta = {"firmware": dom.cfg.hvm.get("firmware", "seabios")}
    if meta["firmware"] == "ovmf":
        meta["ovmf_code_size"] = qhvm.OVMF_CODE.stat().st_size
    return meta


def check_restore(cfg, meta: dict, path: str) -> None:
    """Refuse a restore whose firmware differs from the saved one's."""
    want = meta.get("firmware")
    if cfg.builder != "hvm" or want is None:
        return
    have = cfg.hvm.get("firmware", "seabios")
    if have != want:
        raise InvalidRequest(f"{path}: saved with {want} firmware, the config asks for {have}")
    if want == "ovmf":
        try:
            size = qhvm.OVMF_CODE.stat().st_size
        except OSError:
            raise InvalidRequest(f"{path}: saved under UEFI, but {qhvm.OVMF_CODE} is missing "
                                 "(apt-get install ovmf)") from None
        if size != meta.get("ovmf_code_size", size):
            raise InvalidRequest(f"{path}: saved with a {meta['ovmf_code_size']}-byte OVMF image, "
                                 f"this host's {qhvm.OVMF_CODE} has {size} bytes")


async def monitor(dom: FeatureContext, command: str) -> str:
    """One HMP command (the manual's Ctrl+Alt+2 monitor) through QMP."""
    if not command.strip():
        return ""
    if command.split()[0] in ("quit", "q"):
        # QEMU would exit under xend, which would take it for a crash.
        raise InvalidRequest("qemu-monitor: 'quit' would kill the device model; use xm destroy")
    why = monitorfilter.refusal(command, bool(dom.config["qemu-monitor-host-access"]))
    if why:
        log.warning("%s: %s", dom.name, why)
        raise InvalidRequest(why)
    if dom.state != "running" or dom.monitor is None:
        raise Conflict(f"Domain {dom.name} is not running (state {dom.state})")
    try:
        if screendump.is_screendump(command.strip()):
            out = await screendump.run(dom.monitor, command.strip())    # by descriptor
        else:
            out = await dom.monitor.human_command(command)
    except QMPError as e:
        raise InvalidRequest(f"qemu-monitor: {e}") from None
    log.info("%s: qemu-monitor: %s", dom.name, command)
    return str(out)


class HvmFeature(Feature):
    """HVM firmware (OVMF variables) and display (VNC password and port)."""

    name = "hvm"

    def check_restore(self, cfg, meta: dict, what: str) -> None:
        check_restore(cfg, meta, what)

    async def before_start(self, ctx: FeatureContext, rt: "Runtime") -> None:
        if ctx.cfg.builder == "hvm":
            rt.hvm = prepare(ctx, rt)

    async def after_start(self, ctx: FeatureContext) -> None:
        await after_start(ctx)

    async def adopt(self, ctx: FeatureContext) -> None:
        await query_vnc(ctx)

    async def release(self, ctx: FeatureContext) -> None:
        keep_nvram(ctx)

    def save_meta(self, ctx: FeatureContext) -> dict:
        return save_meta(ctx)
