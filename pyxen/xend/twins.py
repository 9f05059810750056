"""Migration to the same host (``xm migrate dom localhost``): two QEMUs for
one domain during the switch-over, and who is the domain at every step.

It goes through the real relocation path (migration.py to this host's own
relocation server, relocation.py); what differs is only that the arriving
domain is the *twin* of one the registry has already, under the same uuid
and name, with a new domid (Xen's rule: a migrated domain gets a new id):

* until the commit the twin is a shadow (``Domains.shadows``): never
  listed or looked up (``xm list`` shows the source), but it holds its
  memory, taps and QEMU; its record and config are under
  ``storekeys.incoming`` and the source's runtime record stays untouched;
* the commit is one store transaction (:func:`commit`): the twin's record
  becomes the uuid's runtime record (naming the source's QEMU it
  replaces), the incoming key goes; in memory the twin takes the
  registry's slot and the source becomes the shadow, *superseded*: its
  teardown leaves the store, the domain lock and the uuid's cgroup alone;
* once the source's QEMU is gone the twin's record stops naming it
  (:func:`replaced`).

An xend killed anywhere in between: an incoming key left means no commit
happened — the twin is destroyed (:func:`roll_back_arrivals`) and the
source's interrupted migration rolls back (it resumes; migration.recover
knows a same-host commit point is never uncertain).  A runtime record that
still names a replaced QEMU means the commit happened — that QEMU is
killed and its taps removed (:func:`drop_replaced`) and the twin resumed
unless it arrived paused (:func:`resume_arrived`).  So one guest runs and
one record exists, never two and never none.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from .. import storekeys
from ..config import sxp
from ..config.domain import DomainConfig
from ..config.errors import ConfigError
from ..hypervisor.qemu import process
from ..hypervisor.qemu.monitor import PAUSED_STATES
from ..store import Delete
from .errors import Conflict, XendError

log = logging.getLogger("pyxen.domain.migrate")


X509_V_ERR_HOSTNAME_MISMATCH = 62     # OpenSSL's verify code for a certificate of another name


def is_loopback(host: str) -> bool:
    """*host* names this machine's loopback only (``localhost``, ``127.0.0.1``)."""
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
        return bool(addrs) and all(ipaddress.ip_address(a.partition("%")[0]).is_loopback for a in addrs)
    except (OSError, UnicodeError, ValueError):
        return False


@dataclass
class Loopback:
    """How ``xm migrate dom localhost`` reaches this xend when nobody else
    listens at the loopback address: its relocation server's own listen
    address (*listen*, if it has one: it hears nothing else), and TLS
    without the name check (*ctx*) but requiring this host's own
    certificate (*own*, DER), since no host certificate names localhost.
    (This host's own address or cluster name need none of this; the target
    end knows the migration as its own by its id either way.)"""
    listen: str | None
    ctx: ssl.SSLContext | None
    own: bytes | None


def loopback(host: str, listen: str, make_ctx, cert: Path) -> Loopback | None:
    """A Loopback for destination *host*, None if it is not a loopback name.
    *make_ctx* makes a fresh client TLS context (None: plaintext)."""
    if not is_loopback(host):
        return None
    listen = listen if listen and listen not in ("0.0.0.0", "::", host) else None
    ctx = make_ctx()
    if ctx is None:
        return Loopback(listen, None, None)
    ctx.check_hostname = False
    try:
        own = ssl.PEM_cert_to_DER_cert(cert.read_text())
    except ValueError as e:
        raise OSError(f"{cert}: {e}") from None
    return Loopback(listen, ctx, own)


def twin_of(source):
    """The arriving copy of *source* on this host, if one exists."""
    return next((d for d in source.reservations.domains() if d.twin and d.uuid == source.uuid), None)


async def wait_gone(source, timeout: float = 15.0) -> None:
    """Until *source*'s arriving copy is gone (the relocation end drops it
    when the migration fails), at most *timeout* seconds."""
    end = time.monotonic() + timeout
    while twin_of(source) is not None and time.monotonic() < end:
        await asyncio.sleep(0.05)


def refuse_unsupported(cfg: DomainConfig, copy_storage: bool) -> None:
    """What a same-host migration cannot do, refused before anything starts."""
    if copy_storage:
        raise Conflict(f"domain {cfg.name}: --copy-storage moves disks to another host; a migration "
                       "to the same host uses the disks where they are (leave the option out)")
    if cfg.vtpm:
        raise Conflict(f"domain {cfg.name} has a vTPM, whose state one swtpm holds at a time: it cannot "
                       "migrate to the host it runs on")


def prepare(twin, source) -> None:
    """*twin* (not yet persisted) arrives from *source*, on this host."""
    twin.twin = True
    # SEDF's parameters are the domain's, not the config's: they stay.
    twin.sedf = dict(source.sedf)


def commit(domains, twin):
    """The commit point on the target's end: *twin* (state already
    running) is the domain of record from here on.  Returns the source,
    now superseded."""
    source = domains.by_uuid.get(twin.uuid)
    if source is None or twin not in domains.shadows:
        raise XendError(f"domain {twin.name}: the copy it replaces is gone; not committing")
    twin.replaces = {"domid": source.domid, "pid": source.pid, "vif_devids": list(source.vif_devids),
                     "vifs_up": sorted(source.vifs_up),
                     "qemu_ident": list(source.qemu_ident) if source.qemu_ident else None}
    twin.twin = False
    try:
        st = twin.store
        twin.persist(config=True, extra=((), [Delete(storekeys.incoming(st.host, twin.uuid))]))
    except BaseException:
        twin.twin, twin.replaces = True, None
        raise
    domains.shadows.remove(twin)
    domains.shadows.append(source)
    domains.by_uuid[twin.uuid] = twin
    source.superseded = True
    return source


def copy_pinning(source, twin) -> None:
    """Each vCPU thread of *twin* on the CPUs its counterpart of *source*
    runs on now (``xm vcpu-pin`` since boot included)."""
    for n, (old, new) in enumerate(zip(source.vcpu_tids, twin.vcpu_tids)):
        try:
            os.sched_setaffinity(new, os.sched_getaffinity(old))
        except OSError as e:
            log.warning("%s: vCPU %d: pinning not carried over: %s", twin.name, n, e.strerror)


def replaced(twin, old) -> None:
    """*old*, superseded, is gone: *twin*'s record stops naming it."""
    if twin is not None and twin.replaces and twin.replaces.get("domid") == old.domid:
        twin.replaces = None
        twin.persist_quietly()


async def roll_back_arrivals(domains) -> None:
    """At xend's start: every twin that did not reach the commit goes
    (its QEMU, taps and run dir), before its source is adopted."""
    st = domains.store
    for key in st.keys(storekeys.runtime_prefix(st.host)):
        uuid = storekeys.uuid_of_incoming(st.host, key)
        if not uuid:
            continue
        rec = st.get_json(key)
        try:
            cfg = DomainConfig.from_sxp(str(rec["config"]))
            dom = domains.from_record(cfg, int(rec["domid"]), rec)
        except (ConfigError, sxp.SxpError, KeyError, ValueError, TypeError) as e:
            log.error("domain %s: corrupt record of a same-host arrival (%s); setting it aside", uuid, e)
            st.quarantine(key, str(e))
            continue
        dom.twin = True
        log.info("%s: migration to this same host was interrupted before its commit; dropping the "
                 "arriving copy (domid %d)", dom.name, dom.domid)
        # Its QEMU by the record, the pidfile, or (xend died before either)
        # by uuid and run dir: never the source's, which runs in its own.
        run_dir = domains.paths.domain_run(dom.domid)
        for pid in sorted({dom.pid, process.read_pidfile(run_dir / "qemu.pid"),
                           *process.find_by_uuid(uuid, run_dir)} - {None}):
            await _kill(pid, uuid)
        dom.pid = None
        domains.shadows.append(dom)
        await dom.destroy(force=True)


async def drop_replaced(domains, dom) -> None:
    """At xend's start, *dom*'s record still names the QEMU it replaced:
    that QEMU goes, with its taps and run dir."""
    old = dom.replaces or {}
    try:
        domid = int(old["domid"])
    except (KeyError, TypeError, ValueError):
        log.error("%s: bad record of the QEMU it replaced (%r); nothing to clean", dom.name, old)
        dom.replaces = None
        return
    log.info("%s: finishing a migration to this same host: removing the copy it replaced (domid %d)",
             dom.name, domid)
    pid = old.get("pid")
    if pid != dom.pid:
        await _kill(pid, dom.uuid)
    corpse = domains.from_record(dom.cfg, domid, {k: v for k, v in old.items() if k != "pid"})
    corpse.superseded = True
    await corpse.release()


async def resume_arrived(dom, want_paused: bool) -> None:
    """After :func:`drop_replaced` and the twin's adoption: it runs unless
    it arrived paused (xend may have died between the commit and 'cont')."""
    if not want_paused and dom.monitor is not None and await dom.monitor.status() in PAUSED_STATES:
        await dom.monitor.cont()
        dom.paused = False
        log.info("%s: resumed after the interrupted switch-over", dom.name)
    dom.replaces = None
    dom.persist()


async def _kill(pid, uuid: str) -> None:
    if pid and process.is_ours(pid, uuid):
        process.kill(pid)
        await process.wait_exit(pid, 5)
