"""``xm snapshot-create / -list / -revert / -delete``: a running domain's
disk and memory state, taken at one instant, kept as a tree, reverted to
and deleted in any order.

The disk side (which disks may, raw overlays, QEMU's node names, freeing)
is snapdisks.py; the tree is snaptree.py.  Why this shape
(docs/snapshots.md says more):

* **Disks: qcow2 internal snapshots**, all of a domain's writable disks in
  one QMP ``transaction`` (all or none).  A qcow2 internal snapshot is a
  complete, reference-counted view of the image, so the tree needs no
  overlay files: revert to any node is ``qemu-img snapshot -a``, and
  deleting a node in the middle only drops its references — nothing to
  merge, children unaffected.  External overlays would need a tree of
  files, block-commit/stream on delete and a second descriptor per disk for
  the confined QEMU.  Disks that are not qcow2 (raw files, ``phy:``
  devices, NBD) are refused with one line for now (see docs/snapshots.md).
* **Memory: an external state file** per snapshot under
  ``var/lib/pyxen/snapshots/<uuid>/`` in the save-file format
  (checkpoint.py: versioned, checksummed, carrying the booted config), so
  a guest with no disk at all (the default image runs from its initramfs)
  can be snapshotted, and revert is exactly ``xm restore``'s proven load.
* **One instant**: without ``--live`` the guest is paused, the disks are
  taken, the memory is written, the guest runs on.  With ``--live`` the
  memory is copied while the guest runs; QEMU stops it for the last pass
  (pause-before-switchover) and the disks are taken right then, before
  QEMU lets go of them.
* **Revert restarts QEMU** on the reverted disks and loads the memory
  state, so the guest runs on from the snapshot instant (its uptime is the
  snapshot's); a disk-only snapshot boots the guest afresh on its disks.
* **Metadata in the store** (snaptree.py: ``storekeys.snapshots(uuid)``,
  shared, by uuid), written last and atomically: the commit point of a
  create.  An xend killed before it rolls the create back when it starts
  (the job's recovery below); the snapshot survives xend restarts and
  ``xm save``/``restore`` (same uuid, same images).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time

from .. import faults, storekeys
from ..config import sxp
from ..config.domain import DomainConfig
from ..hypervisor.qemu.monitor import QMPError, quietly
from ..storage import qcow2
from ..store import StoreError
from . import checkpoint, durable, jobs, snaptree
from .errors import Conflict, InvalidRequest, NoSuchSnapshot, XendError
from .lifecycle import State
from .snapdisks import SnapshotDisks, unlink as _unlink

log = logging.getLogger("pyxen.domain")


def _tree_error(e: snaptree.TreeError) -> XendError:
    if e.kind == "unknown":
        return NoSuchSnapshot(str(e))
    if e.kind == "exists":
        return Conflict(str(e))
    return InvalidRequest(str(e))


class DomainSnapshots(SnapshotDisks):
    """Mixed into Domain: the four snapshot operations and their tree."""

    # ---------------------------------------------------------------- tree
    def snapshot_doc(self) -> dict:
        return snaptree.normalise(self.store.get_json(storekeys.snapshots(self.uuid)))

    def _change_doc(self, edit, *args) -> dict:
        """One compare-and-swap of the tree (a TreeError becomes the API's 4xx)."""
        def change(old):
            return edit(snaptree.normalise(old), *args, self.name)
        try:
            return self.store.update_json(storekeys.snapshots(self.uuid), change)
        except snaptree.TreeError as e:
            raise _tree_error(e) from None

    def snapshot_state_dir(self):
        return self.paths.snapshot_dir / self.uuid

    def snapshot_list(self) -> dict:
        doc = self.snapshot_doc()
        rows = []
        for n in snaptree.ordered(doc):
            s = doc["snapshots"][n]
            rows.append({"name": n, "created": s.get("created"), "kind": s.get("kind"),
                         "size": s.get("size", 0), "parent": s.get("parent"),
                         "current": n == doc["current"], "live": bool(s.get("live")),
                         "disks": list(s.get("vdevs", []))})
        return {"snapshots": rows, "current": doc["current"]}

    # ------------------------------------------------------------- checks
    def refuse_snapshot_features(self, op: str) -> None:
        if self.cfg.pci:
            raise Conflict(f"Domain {self.name} has PCI passthrough devices, whose state QEMU cannot "
                           f"save: {op} refused")
        if self.cfg.vtpm:
            raise Conflict(f"Domain {self.name} has a vTPM, whose state is not part of a snapshot (a "
                           f"revert would pair old memory with a newer TPM): {op} refused")

    # -------------------------------------------------------------- create
    async def snapshot_create(self, name: str, disk_only: bool = False, live: bool = False) -> dict:
        self.refuse_if_busy("snapshot-create")
        async with self.lock:
            self.require_live("snapshot-create")
            return await self._snapshot_create_locked(name, disk_only, live)

    async def _snapshot_create_locked(self, name: str, disk_only: bool, live: bool) -> dict:
        try:
            snaptree.add(self.snapshot_doc(), name, {}, self.name)      # name and uniqueness, early
        except snaptree.TreeError as e:
            raise _tree_error(e) from None
        self.refuse_snapshot_features("snapshot-create")
        disks = self.snapshot_disks()
        if disk_only and not disks:
            raise InvalidRequest(f"Domain {self.name} has no writable disk: a disk-only snapshot would "
                                 "hold nothing")
        sid = "pyxen-" + secrets.token_hex(8)
        try:
            disks = [await self._overlay(d) if d.fmt == "raw" else d for d in disks]
            nodes = list((await self._root_nodes([d.vdev for d in disks])).values())
        except QMPError as e:
            raise XendError(f"Cannot snapshot domain {self.name}: {e}") from None
        resume = not self.paused
        state = None if disk_only else str(self.snapshot_state_dir() / f"{sid}.state")
        tmp = None if state is None else state + ".tmp"
        t0 = time.monotonic()
        self.marks = {"start": t0}
        config = sxp.to_string(self.booted_config().to_sxp())
        # The job is recorded before anything is taken; if it cannot be
        # (a full state disk) the domain is not left busy (durable.py).
        async with durable.change(self, "snapshot-create"):
            self.job = jobs.Job("snapshot-create", "taking", name=name, id=sid, resume=resume, state=state,
                                tmp=tmp, vdevs=[d.vdev for d in disks], paths=[d.target for d in disks])
        taken = False

        async def take_disks() -> None:
            nonlocal taken
            if nodes:
                await self.monitor.snapshot_internal(nodes, sid)
            taken = True
            faults.point("snapshot-after-disks")

        size = 0
        try:
            if resume and (disk_only or not live):
                await self.monitor.stop()
            elif not resume:
                await self.leave_postmigrate()     # a paused guest's disks may still be QEMU's to let go
            if disk_only or not live or not nodes:
                await take_disks()
            if not disk_only:
                # Live with disks: they are taken at the switch-over, guest stopped.
                size = await self._write_state(tmp, state, config, None if taken else take_disks)
            faults.point("snapshot-before-commit")
            rec = {"id": sid, "created": time.time(), "kind": "disk" if disk_only else "memory",
                   "live": live and not disk_only, "paused": not resume, "state": state, "size": size,
                   "vdevs": [d.vdev for d in disks], "paths": [d.target for d in disks], "config": config}
            # The commit point: from here the snapshot exists.
            self._change_doc(snaptree.add, name, rec)
        except BaseException as e:
            await self._create_failed(nodes if taken else [], tmp, state, resume)
            if isinstance(e, (QMPError, StoreError, OSError, checkpoint.SaveFileError)):
                raise XendError(f"Cannot snapshot domain {self.name}: {getattr(e, 'strerror', None) or e}"
                                f"{self._still()}") from None
            raise
        faults.point("snapshot-after-commit")
        await self._finish_create(resume)
        elapsed = time.monotonic() - t0
        log.info("%s: snapshot %s taken (%s, %d disk(s), %d bytes of memory state) in %.2f s",
                 self.name, name, "disk only" if disk_only else ("live" if live else "paused"),
                 len(disks), size, elapsed)
        return {"name": name, "kind": "disk" if disk_only else "memory", "size": size,
                "seconds": round(elapsed, 3)}

    async def _write_state(self, tmp: str, state: str, config: str, switchover) -> int:
        """The memory state into *state* (via *tmp*), in the save-file format."""
        loop = asyncio.get_running_loop()
        os.makedirs(os.path.dirname(state), mode=0o700, exist_ok=True)
        meta = await self.save_meta()
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            offset = len(checkpoint.encode_header(config, meta, 0, b""))
            stream, digest = await self._stream_out(fd, tmp, offset, switchover)
            header = checkpoint.encode_header(config, meta, stream, digest)
            await loop.run_in_executor(None, checkpoint.finish_file, fd, header)
        finally:
            os.close(fd)
        await loop.run_in_executor(None, checkpoint.read_header, tmp)    # reads back, or the create fails
        os.rename(tmp, state)
        await loop.run_in_executor(None, checkpoint.fsync_dir, state)
        return os.path.getsize(state)

    async def _create_failed(self, nodes: list[str], tmp: str | None, state: str | None,
                             resume: bool) -> None:
        """Roll a create back: no disk snapshot, no state file, the guest as it was."""
        mon = self.monitor
        if mon is not None and self.qemu_alive():
            if nodes and nodes[0].startswith("vdev:"):       # from a job record: resolve them now
                nodes = list((await quietly(self._root_nodes([n[5:] for n in nodes])) or {}).values())
            await quietly(mon.migration.cancel(self.qemu_alive))
            await quietly(mon.migrate_set_capabilities(pause_before_switchover=False))
            if not resume:
                await quietly(self.leave_postmigrate())
            for n in nodes:
                await quietly(mon.snapshot_delete_internal(n, self.job["id"]))
            if resume and await self.try_cont():
                self.paused = False
        _unlink(tmp)
        _unlink(state)
        self.job = None
        self.persist_quietly()

    async def _finish_create(self, resume: bool) -> None:
        if resume:
            if await self.try_cont():
                self.paused = False
            else:
                log.error("%s: could not resume the guest after its snapshot", self.name)
        else:
            # Paused before: paused after, with its disks QEMU's again.
            await quietly(self.leave_postmigrate())
        self.job = None
        self.persist_quietly()

    # -------------------------------------------------------------- revert
    async def snapshot_revert(self, name: str) -> dict:
        """The guest as it was at snapshot *name*: QEMU restarts on the
        reverted disks and loads the memory state (a disk-only snapshot:
        boots afresh).  Checked before anything stops."""
        self.refuse_if_busy("snapshot-revert")
        async with self.lock:
            self.require_live("snapshot-revert")
            loop = asyncio.get_running_loop()
            try:
                snap = snaptree.get(self.snapshot_doc(), name, self.name)
            except snaptree.TreeError as e:
                raise _tree_error(e) from None
            self.refuse_snapshot_features("snapshot-revert")
            info, cfg = await loop.run_in_executor(None, self._revert_plan, name, snap)
            async with durable.change(self, "snapshot-revert"):
                self.job = jobs.Job("snapshot-revert", "stopping", name=name)
            t0 = time.monotonic()
            await self._revert_locked(name, snap, info, cfg)
            self._change_doc(snaptree.revert, name)
            self.job = None
            self.persist()
            log.info("%s: reverted to snapshot %s in %.2f s", self.name, name, time.monotonic() - t0)
            return {"name": name, "kind": snap.get("kind"), "seconds": round(time.monotonic() - t0, 3)}

    def _revert_plan(self, name: str, snap: dict):
        """(the memory state's SaveInfo or None, the config to run): every
        file the revert needs is checked here, before the guest stops."""
        info = None
        text = snap.get("config")
        if snap.get("kind") == "memory":
            try:
                info = checkpoint.read_header(str(snap.get("state")))
            except checkpoint.SaveFileError as e:
                raise InvalidRequest(f"Snapshot {name} of domain {self.name} cannot be reverted to: {e}") from None
            text = info.config
        try:
            cfg = DomainConfig.from_sxp(sxp.from_string(text))
        except Exception as e:
            raise InvalidRequest(f"Snapshot {name} of domain {self.name}: its config is invalid: {e}") from None
        cfg.name = self.name
        for path in snap.get("paths", []):
            try:
                tags = qcow2.snapshot_names(path)
            except (qcow2.Qcow2Error, ValueError) as e:
                raise InvalidRequest(f"Snapshot {name} of domain {self.name}: disk {path}: {e}") from None
            if snap.get("id") not in tags:
                raise InvalidRequest(f"Snapshot {name} of domain {self.name}: disk {path} no longer holds "
                                     f"its disk snapshot {snap.get('id')}")
        return info, cfg

    async def _revert_locked(self, name: str, snap: dict, info, cfg) -> None:
        loop = asyncio.get_running_loop()
        self.expect_exit = True
        await self.release()
        self.pid = None
        self.job["phase"] = "disks"
        self.persist()
        faults.point("revert-after-stop")
        try:
            for path in snap.get("paths", []):
                await loop.run_in_executor(None, qcow2.apply, path, str(snap["id"]))
            self.cfg = cfg
            self.persist(config=True)
            await self.start(paused=bool(snap.get("paused")), restore=info)
        except Exception as e:
            log.error("%s: revert to snapshot %s failed: %s", self.name, name, e)
            await self.release()
            self.pid = None
            self.job = None
            self.state = State.CRASHED
            self.persist_quietly()
            self.halted.set()
            raise XendError(f"Cannot revert domain {self.name} to snapshot {name}: {e}; the domain is "
                            "left crashed (xm destroy removes it, its snapshots stay)") from None

    # -------------------------------------------------------------- delete
    async def snapshot_delete(self, name: str) -> dict:
        """Forget snapshot *name* (its children move up to its parent) and
        free its disk snapshot and state file.  The tree changes first, in
        one step; a file that cannot be freed after that is logged."""
        self.refuse_if_busy("snapshot-delete")
        async with self.lock:
            try:
                snap = snaptree.get(self.snapshot_doc(), name, self.name)
            except snaptree.TreeError as e:
                raise _tree_error(e) from None
            self._change_doc(snaptree.delete, name)
            warnings = await self._free_snapshot(snap)
            log.info("%s: snapshot %s deleted", self.name, name)
            return {"name": name, "warnings": warnings}



@jobs.recovers("snapshot-create")
async def recover_create(dom, job: dict) -> None:
    """After an xend restart: a create whose metadata was written is
    finished (the guest runs again); one that was not is rolled back."""
    doc = dom.snapshot_doc()
    done = doc["snapshots"].get(job.get("name"), {}).get("id") == job.get("id")
    alive = dom.monitor is not None and dom.qemu_alive()
    resume = bool(job.get("resume"))
    if done:
        log.info("%s: finished snapshot %s interrupted by xend's exit", dom.name, job.get("name"))
        if alive:
            async with dom.lock:
                await dom._finish_create(resume)
        else:
            dom.job = None
            dom.persist()
        return
    log.info("%s: rolling back snapshot %s interrupted by xend's exit", dom.name, job.get("name"))
    vdevs, paths = job.get("vdevs") or [], job.get("paths") or []
    async with dom.lock:
        if alive:
            await dom._create_failed([f"vdev:{v}" for v in vdevs], job.get("tmp"), job.get("state"), resume)
            return
        loop = asyncio.get_running_loop()
        for path in paths:
            try:
                if job.get("id") in qcow2.snapshot_names(path):
                    await loop.run_in_executor(None, qcow2.delete, path, str(job["id"]))
            except (qcow2.Qcow2Error, ValueError) as e:
                log.error("%s: cannot drop disk snapshot %s of %s: %s", dom.name, job.get("id"), path, e)
        _unlink(job.get("tmp"))
        _unlink(job.get("state"))
        dom.job = None
        dom.persist()


@jobs.recovers("snapshot-revert")
async def recover_revert(dom, job: dict) -> None:
    """After an xend restart: a revert whose QEMU still runs (the old one,
    not yet stopped, or the new one) is left as it is; one that stopped the
    old QEMU is done again from the start (applying a disk snapshot twice
    is harmless)."""
    if dom.monitor is not None and dom.qemu_alive():
        dom.job = None
        dom.persist()
        return
    name = job.get("name")
    log.info("%s: redoing the revert to snapshot %s interrupted by xend's exit", dom.name, name)
    async with dom.lock:
        try:
            snap = snaptree.get(dom.snapshot_doc(), name, dom.name)
            info, cfg = await asyncio.get_running_loop().run_in_executor(None, dom._revert_plan, name, snap)
            await dom._revert_locked(name, snap, info, cfg)
            dom._change_doc(snaptree.revert, name)
        except (snaptree.TreeError, XendError) as e:
            log.error("%s: cannot finish the revert to snapshot %s: %s", dom.name, name, e)
        dom.job = None
        dom.persist_quietly()
