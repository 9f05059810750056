"""``xm create`` placed on another member of the cluster: the create goes to
that host's xend and the domain starts there.

It travels over the relocation server's connection — TLS with the pool's
host certificates on both ends and the target's hosts-allow, the same
authentication a migration gets — as one request, ``(create (config SXP)
(paused 0|1) (host ORIGIN))``, answered ``(ok (domid N) (name X) (uuid U))``
or ``(err ...)``.  The config is parsed on the target, never evaluated, and
started there without a second placement (the origin already chose), so a
create is placed exactly once and cannot bounce between hosts.

Before it places a domain, the origin asks each candidate which of the
domain's paths (disk targets, kernel, ramdisk) it lacks, over the same
link: ``(check (version 1) (paths P...))``, answered ``(ok (missing P...))``.
Only the pool's hosts get that far (host certificate, hosts-allow), and the
answer says only whether each path exists.
"""

from __future__ import annotations

import logging
import os

from ..config import sxp
from ..config.domain import DomainConfig
from ..config.errors import ConfigError
from . import relocproto as rp
from .errors import XendError
from .relolink import _connect, client_context, run_blocking

log = logging.getLogger("pyxen.relocation")

CREATE_TIMEOUT = 300.0      # the target boots nothing before it answers, but QEMU must start
CHECK_TIMEOUT = 5.0         # a host that cannot say within this is unfit (placement names why)
MAX_PATHS, MAX_PATH_LEN = 256, 4096


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


def check_request(paths) -> list:
    return ["check", ["version", str(rp.VERSION)], ["paths", *sorted(paths)]]


def parse_check(msg: list) -> list[str]:
    """The paths a check request asks about (absolute, bounded)."""
    if str(sxp.child_value(msg, "version")) != str(rp.VERSION):
        raise rp.ProtocolError(f"relocation protocol version {sxp.child_value(msg, 'version')!r} "
                               f"(this xend speaks {rp.VERSION})")
    found = [v for v in msg[1:] if isinstance(v, list) and v and v[0] == "paths"]
    paths = found[0][1:] if found else []
    if len(paths) > MAX_PATHS:
        raise rp.ProtocolError(f"(check ...) asks about {len(paths)} paths (at most {MAX_PATHS})")
    for p in paths:
        if not isinstance(p, str) or not p.startswith("/") or len(p) > MAX_PATH_LEN or "\0" in p:
            raise rp.ProtocolError("(check ...) paths must be absolute file names")
    return paths


def missing_here(paths) -> list[str]:
    """Which of *paths* this host does not have (placement's 'no /x')."""
    return sorted(p for p in paths if not os.path.exists(p))


def _value(values: list, key: str):
    for v in values:
        if isinstance(v, list) and len(v) == 2 and v[0] == key:
            return v[1]
    return None


async def _link(domains, address: str, port: int, no_cert: str, failed: str) -> rp.Link:
    """A relocation link to another member, or one error line: *no_cert*
    starts it when this host's certificate is missing, *failed* when the
    connection failed."""
    config = domains.config
    ctx = client_context(config, domains.paths, no_cert)
    try:
        return await run_blocking(_connect, address, int(port or config["xend-relocation-port"]), ctx)
    except XendError as e:
        raise XendError(f"{failed}: {e}") from None


async def forward(domains, name: str, address: str, port: int, cfg: DomainConfig, paused: bool) -> dict:
    """Start *cfg* on member *name* (relocation server at *address*:*port*);
    its answer as the create op's result, with the host named."""
    what = f"cannot create domain {cfg.name} on host {name}"
    link = await _link(domains, address, port, what, what)
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


async def ask_missing(domains, name: str, address: str, port: int, paths) -> frozenset:
    """Which of *paths* member *name* lacks; XendError (one line) if it
    cannot be asked."""
    link = await _link(domains, address, port, f"cannot ask host {name} about its disks",
                       "cannot be asked about its disks and kernel")
    try:
        reply = await run_blocking(link.request, check_request(paths), "missing", CHECK_TIMEOUT)
    except (rp.PeerError, rp.ProtocolError, OSError) as e:
        raise XendError(f"did not answer the disk and kernel check: {e}") from None
    finally:
        await run_blocking(link.close)
    missing = reply[0][1:] if reply and isinstance(reply[0], list) else []
    return frozenset(str(p) for p in missing)


async def serve_check(link: rp.Link, first: list, peer: str) -> None:
    """The candidate's side of the check: which paths it lacks."""
    try:
        paths = parse_check(first)
    except rp.ProtocolError as e:
        log.warning("relocation: bad check request from %s: %s", peer, e)
        await run_blocking(link.send, rp.err("protocol", str(e)))
        return
    await run_blocking(link.send, rp.ok(["missing", *missing_here(paths)]))


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
