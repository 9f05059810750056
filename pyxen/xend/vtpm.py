"""xend's vTPMs (``vtpm = ['instance=N,backend=0']``): which TPM state a
domain gets, and its swtpm's life beside the domain's QEMU.

A vTPM's persistent state is swtpm's files, kept in the store as blobs
under one key (:func:`pyxen.storekeys.vtpm`), named the way Xen's vTPM
manager named instances: by ``instance=N``, else by xl's ``uuid=``, else by
the domain's name (Xen's hotplug scripts kept a name -> instance table).  It
outlives the domain, so a domain destroyed and created again, or restored,
finds its TPM as it left it.  Two domains never share one.  swtpm works on
a local copy (:meth:`pyxen.store.Store.checkout` before it starts), which
goes back into the store (:meth:`~pyxen.store.Store.checkin`) when it stops
— the domain shut down, destroyed, saved or migrated away — or, if xend
lost track of it, before the next swtpm of that TPM starts.

:func:`start_fresh` is the one step every way of starting a domain's QEMU
takes — create, restore, a restart after a crash, and the receiving side
of a migration: a new swtpm on the domain's state, its socket handed to
QEMU through the runtime.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .. import storekeys
from ..config.domain import DomainConfig
from ..hypervisor import swtpm
from ..store import StoreError
from .errors import Conflict, InvalidRequest, XendError

if TYPE_CHECKING:
    from ..hypervisor.qemu.argv import Runtime
    from .domain import Domain
    from .domains import Domains

log = logging.getLogger("pyxen.vtpm")


def state_key(cfg: DomainConfig) -> str | None:
    """The store key of the domain's vTPM state, or None without a vTPM."""
    if not cfg.vtpm:
        return None
    t = cfg.vtpm[0]
    return storekeys.vtpm(instance=t.instance, uuid=t.uuid, name=cfg.name)


def describe(cfg: DomainConfig) -> str:
    t = cfg.vtpm[0]
    if t.instance is not None:
        return f"vTPM instance {t.instance}"
    if t.uuid is not None:
        return f"vTPM {t.uuid}"
    return f"the vTPM of domain {cfg.name}"


def check(reg: "Domains", cfg: DomainConfig) -> None:
    """Before a create or restore: swtpm is there and no other domain has this TPM."""
    key = state_key(cfg)
    if key is None:
        return
    if not swtpm.available():
        raise InvalidRequest("vtpm: swtpm is not installed on this host (Debian package swtpm)")
    for d in reg.by_uuid.values():
        if d.uuid != cfg.uuid and state_key(d.cfg) == key:
            raise Conflict(f"{describe(cfg)} is in use by domain {d.name}")


def _files(dom: "Domain") -> tuple[Path, Path, Path]:
    run = dom.reg.paths.domain_run(dom.domid)
    return run / "tpm.sock", run / "swtpm.pid", dom.reg.paths.log / f"vtpm-{dom.name}.log"


async def start_fresh(dom: "Domain", rt: "Runtime") -> Path | None:
    """Start a new swtpm for *dom* (its run dir must exist) and point *rt* at it."""
    key = state_key(dom.cfg)
    if key is None:
        return None
    sock, pidfile, logf = _files(dom)
    await swtpm.stop(sock, pidfile)       # a leftover of an earlier QEMU of this domain
    state = dom.reg.paths.checkout(key)
    try:
        if state.is_dir():
            # A copy no stop checked in (xend died first): it is the newest.
            dom.reg.store.checkin(key, state)
        dom.reg.store.checkout(key, state)
    except StoreError as e:
        raise XendError(str(e)) from None
    loop = asyncio.get_running_loop()
    try:
        pid = await loop.run_in_executor(None, swtpm.start, state, sock, pidfile, logf)
    except swtpm.SwtpmError as e:
        raise XendError(f"cannot start the vTPM of domain {dom.name}: {e}") from None
    log.info("%s: swtpm pid %d on %s (%s)", dom.name, pid, key, describe(dom.cfg))
    rt.tpm_sock = sock
    return sock


def adopt(dom: "Domain") -> None:
    """After an xend restart: the domain's swtpm should still serve its QEMU."""
    if not dom.cfg.vtpm:
        return
    sock, pidfile, _ = _files(dom)
    pid = swtpm.find(sock, pidfile)
    if pid is None:
        log.error("%s: its swtpm is gone; the guest's TPM no longer answers", dom.name)
    else:
        log.info("%s: adopted swtpm pid %d", dom.name, pid)


async def stop(dom: "Domain") -> None:
    if not dom.cfg.vtpm:
        return
    sock, pidfile, _ = _files(dom)
    await swtpm.stop(sock, pidfile)
    key, state = state_key(dom.cfg), dom.reg.paths.checkout(state_key(dom.cfg))
    if not state.is_dir():
        return
    try:
        dom.reg.store.checkin(key, state)
    except StoreError as e:
        # The copy stays: the next start of this TPM checks it in first.
        log.error("%s: cannot keep the vTPM state: %s", dom.name, e)
        return
    shutil.rmtree(state, ignore_errors=True)


def devices(dom: "Domain") -> list[dict]:
    """``xm vtpm-list``: Xen's columns (no rings or event channels here: -1)."""
    out = []
    for i, t in enumerate(dom.cfg.vtpm):
        sock, pidfile, _ = _files(dom)
        running = dom.pid is not None and swtpm.find(sock, pidfile) is not None
        out.append({"idx": i, "backend-id": 0, "handle": i, "state": 4 if running else 6, "event-ch": -1,
                    "ring-ref": -1, "be-path": f"/local/domain/0/backend/vtpm/{dom.domid}/{i}",
                    "instance": t.instance, "uuid": t.uuid, "state-key": state_key(dom.cfg)})
    return out
