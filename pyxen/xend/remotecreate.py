"""``xm create`` placed on another member of the cluster: the create goes to
that host's xend and the domain starts there.

It travels over the relocation server's connection — TLS with the pool's
host certificates on both ends and the target's hosts-allow, the same
authentication a migration gets — as one request, ``(create (config SXP)
(paused 0|1) (host ORIGIN))``, answered ``(ok (domid N) (name X) (uuid U))``
or ``(err ...)``.  The config is parsed on the target, never evaluated, and
started there without a second placement (the origin already chose), so a
create is placed exactly once and cannot bounce between hosts.
"""

from __future__ import annotations

import logging

from ..config import sxp
from ..config.domain import DomainConfig
from ..config.errors import ConfigError
from . import relocproto as rp
from .errors import XendError
from .relolink import _connect, client_context, run_blocking

log = logging.getLogger("pyxen.relocation")

CREATE_TIMEOUT = 300.0      # the target boots nothing before it answers, but QEMU must start


def request(cfg: DomainConfig, paused: bool, origin: str) -> list:
    return ["create", ["version", str(rp.VERSION)], ["config", cfg.to_sxp()],
            ["paused", "1" if paused else "0"], ["host", origin]]


def parse_request(msg: list) -> tuple[list, bool, str]:
    """(the (vm ...) config, paused, origin host) of a create request."""
    if str(sxp.child_value(msg, "version")) != str(rp.VERSION):
        raise rp.ProtocolError(f"relocation protocol version {sxp.child_value(msg, 'version')!r} "
                               f"(this xend speaks {rp.VERSION})")
    cfg = sxp.child_value(msg, "config")
    if not isinstance(cfg, list) or not cfg or cfg[0] != "vm":
        raise rp.ProtocolError("(create ...) has no (config (vm ...))")
    paused = str(sxp.child_value(msg, "paused", "0"))
    if paused not in ("0", "1"):
        raise rp.ProtocolError(f"bad paused flag {paused!r}")
    return cfg, paused == "1", str(sxp.child_value(msg, "host", "?"))[:255]


def _value(values: list, key: str):
    for v in values:
        if isinstance(v, list) and len(v) == 2 and v[0] == key:
            return v[1]
    return None


async def forward(domains, name: str, address: str, port: int, cfg: DomainConfig, paused: bool) -> dict:
    """Start *cfg* on member *name* (relocation server at *address*:*port*);
    its answer as the create op's result, with the host named."""
    config = domains.config
    ctx = client_context(config, domains.paths, f"cannot create domain {cfg.name} on host {name}")
    try:
        link = await run_blocking(_connect, address, int(port or config["xend-relocation-port"]), ctx)
    except XendError as e:
        raise XendError(f"cannot create domain {cfg.name} on host {name}: {e}") from None
    try:
        me = domains.cluster.name if domains.cluster is not None else ""
        reply = await run_blocking(link.request, request(cfg, paused, me), "domid", CREATE_TIMEOUT)
    except rp.PeerError as e:
        raise XendError(f"host {name} refused domain {cfg.name}: {e}") from None
    except rp.ProtocolError as e:
        raise XendError(f"creating domain {cfg.name} on host {name} failed: {e}") from None
    finally:
        await run_blocking(link.close)
    try:
        domid = int(_value(reply, "domid"))
    except (TypeError, ValueError):
        raise XendError(f"host {name} answered the create of {cfg.name} without a domain id") from None
    log.info("%s: created on host %s (domid %d)", cfg.name, name, domid)
    return {"domid": domid, "name": str(_value(reply, "name") or cfg.name),
            "uuid": str(_value(reply, "uuid") or cfg.uuid), "host": name}


async def serve(domains, link: rp.Link, first: list, peer: str) -> None:
    """The target's side: start the domain here and answer."""
    try:
        vm, paused, origin = parse_request(first)
        cfg = DomainConfig.from_sxp(vm)
    except (rp.ProtocolError, ConfigError, sxp.SxpError) as e:
        log.warning("relocation: bad create request from %s: %s", peer, e)
        await run_blocking(link.send, rp.err("protocol", f"the domain config is invalid: {e}"))
        return
    log.info("relocation: create of domain %s placed here by host %s (%s)", cfg.name, origin, peer)
    try:
        dom = await domains.create_config(cfg, paused=paused)
    except XendError as e:
        await run_blocking(link.send, rp.err(getattr(e, "code", "refused"), str(e)))
        return
    await run_blocking(link.send, rp.ok(["domid", dom.domid], ["name", dom.name], ["uuid", dom.uuid]))
