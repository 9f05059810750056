"""The disks of a domain's snapshots: which may take one, the qcow2
overlay a raw image gets before its first snapshot, the node each disk
writes to now, and freeing a deleted snapshot's disk tags and state file.
Mixed into Domain through snapshots.DomainSnapshots (docs/snapshots.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time

from .. import storekeys
from ..config.specs import DiskSpec
from ..hypervisor.qemu.monitor import QMPError
from ..storage import qcow2
from . import snaptree
from .errors import Conflict, XendError

log = logging.getLogger("pyxen.domain")


def node_of(vdev: str) -> str:
    return f"d-{vdev}"          # the format node argv.disk_nodes names


def unlink(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("cannot remove %s: %s", path, e.strerror)


class SnapshotDisks:
    """The disk side of the snapshot operations."""

    def snapshot_disks(self) -> list:
        """The disks a snapshot covers: every writable one (a read-only disk
        cannot change).  Refuses a disk that cannot take a snapshot."""
        out = []
        for d in self.cfg.disks:
            if d.readonly or d.devtype == "cdrom" or not d.target:
                continue
            if d.kind == "nbd":
                raise Conflict(f"Disk {d.uname} ({d.vdev}) of domain {self.name} is an NBD export: "
                               "its server would have to take the snapshot")
            if d.kind == "phy" or (os.path.exists(d.target) and not os.path.isfile(d.target)):
                raise Conflict(f"Disk {d.uname} ({d.vdev}) of domain {self.name} is a block device, "
                               "which cannot take a snapshot (no room for a qcow2 overlay on it); "
                               "use a qcow2 image or an LVM snapshot (lvcreate -s)")
            if d.fmt not in ("qcow2", "raw"):
                raise Conflict(f"Disk {d.uname} ({d.vdev}) of domain {self.name} is a {d.fmt} image: "
                               f"snapshots need qcow2 or raw disks (qemu-img convert -O qcow2 {d.target} ...)")
            out.append(d)
        return out

    def overlay_bases(self) -> list:
        """The raw images under this domain's overlays, as the read-only
        disks they now are (the sharing guard counts them: nobody may write
        a base another image depends on)."""
        bases = self.snapshot_doc().get("overlays") or {}
        out = []
        for d in self.cfg.disks:
            b = bases.get(d.target)
            if isinstance(b, dict) and b.get("base"):
                out.append(DiskSpec(uname=f"file:{b['base']}", kind="file", target=str(b["base"]), fmt="raw",
                                    vdev=d.vdev, mode="r"))
        return out

    async def _overlay(self, d):
        """Give raw disk *d* a qcow2 overlay, live: the raw file becomes its
        read-only base and the domain's config names the overlay from now
        on.  The config is persisted before QEMU switches (a crash between
        leaves an empty overlay over the base, which reads the same)."""
        loop = asyncio.get_running_loop()
        path = str(self.snapshot_state_dir() / f"{d.vdev}-{secrets.token_hex(4)}.qcow2")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        try:
            await loop.run_in_executor(None, qcow2.create_overlay, path, d.target)
        except qcow2.Qcow2Error as e:
            raise XendError(f"Cannot make a qcow2 overlay for disk {d.uname} ({d.vdev}): {e}") from None
        new = DiskSpec(uname=f"tap:qcow2:{path}", kind="tap", target=path, fmt="qcow2", vdev=d.vdev,
                       mode=d.mode, devtype=d.devtype, ioemu=d.ioemu, backend=d.backend)

        def record(doc):
            doc = snaptree.normalise(doc)
            doc.setdefault("overlays", {})[path] = {"base": d.target, "vdev": d.vdev, "created": time.time()}
            return doc
        self.store.update_json(storekeys.snapshots(self.uuid), record)
        self.cfg.disks[self.cfg.disks.index(d)] = new
        self.persist(config=True)
        # QEMU (perhaps no longer root) gets the overlay as a descriptor.
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fdset = await self.monitor.add_fd(fd, f"pyxen-overlay:{d.vdev}")
        finally:
            os.close(fd)
        node = (await self._root_nodes([d.vdev]))[d.vdev]
        over = f"o-{d.vdev}-{secrets.token_hex(3)}"
        await self.monitor.blockdev_add({"driver": "qcow2", "node-name": over, "backing": None,
                                         "file": {"driver": "file", "filename": f"/dev/fdset/{fdset}"}})
        await self.monitor.blockdev_snapshot(node, over)
        log.info("%s: disk %s (%s) now writes to the qcow2 overlay %s; the raw image is its read-only base",
                 self.name, d.vdev, d.target, path)
        return new

    def check_detach(self, disk) -> dict | None:
        """``xm block-detach`` of *disk*: None for an ordinary disk; for a
        raw disk's snapshot overlay its record (the overlay is merged back
        into the raw image once detached: :meth:`merge_overlay`), or a
        Conflict while a snapshot keeps disk state in the overlay (merging
        would lose it; a revert would want the disk back)."""
        doc = self.snapshot_doc()
        rec = (doc.get("overlays") or {}).get(disk.target)
        if not (isinstance(rec, dict) and rec.get("base")):
            return None
        users = sorted(n for n, s in doc["snapshots"].items() if disk.target in (s.get("paths") or []))
        if users:
            raise Conflict(f"Disk {disk.vdev} of domain {self.name} writes to a snapshot overlay over its raw "
                           f"image {rec['base']}, and snapshot(s) {', '.join(users)} keep their disk state in "
                           f"it: delete them first (xm snapshot-delete {self.name} NAME), then detach")
        return rec

    async def overlay_node(self, vdev: str) -> str | None:
        """The overlay node a live snapshot put on top of disk *vdev* (None
        when the disk's top node is argv's own d-<vdev>)."""
        node = (await self._root_nodes([vdev]))[vdev]
        return None if node == node_of(vdev) else node

    async def drop_overlay_fd(self, vdev: str) -> None:
        for s in await self.monitor.fdsets():
            if any(f.get("opaque") == f"pyxen-overlay:{vdev}" for f in s.get("fds", [])):
                await self.monitor.remove_fdset(s["fdset-id"])

    async def merge_overlay(self, path: str, rec: dict) -> None:
        """After the detach (QEMU has let go of both files): the overlay's
        writes go into the raw image, so the detached disk is that image
        again, whole; then the overlay and its record go.  A failure keeps
        both and says how to finish by hand."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, qcow2.commit, path)
        except qcow2.Qcow2Error as e:
            log.error("%s: cannot merge the snapshot overlay %s into %s (%s); the disk's data since its "
                      "first snapshot is in the overlay: run `qemu-img commit %s`", self.name, path,
                      rec["base"], e, path)
            return

        def forget(doc):
            doc = snaptree.normalise(doc)
            (doc.get("overlays") or {}).pop(path, None)
            return doc
        self.store.update_json(storekeys.snapshots(self.uuid), forget)
        unlink(path)
        log.info("%s: merged the snapshot overlay of %s back into %s", self.name, rec.get("vdev"), rec["base"])

    async def _root_nodes(self, vdevs: list[str]) -> dict[str, str]:
        """The node each disk's guest device writes to now: d-<vdev> as
        argv named it, or the overlay a snapshot put on top of it."""
        out = {v: node_of(v) for v in vdevs}
        for b in await self.monitor.query_block():
            segs = str(b.get("qdev", "")).split("/")
            vdev = next((s[4:] for s in segs if s.startswith("vbd-")), None)
            node = (b.get("inserted") or {}).get("node-name")
            if vdev in out and node:
                out[vdev] = node
        return out


    async def _free_snapshot(self, snap: dict) -> list[str]:
        loop = asyncio.get_running_loop()
        warnings = []
        attached = {d.target: d.vdev for d in self.cfg.disks}
        for path in snap.get("paths", []):
            try:
                if path in attached and self.monitor is not None and self.qemu_alive():
                    node = (await self._root_nodes([attached[path]]))[attached[path]]
                    await self.monitor.snapshot_delete_internal(node, str(snap["id"]))
                else:
                    await loop.run_in_executor(None, qcow2.delete, path, str(snap["id"]))
            except (QMPError, qcow2.Qcow2Error) as e:
                warnings.append(f"disk {path}: {e}")
                log.warning("%s: cannot free disk snapshot %s of %s: %s", self.name, snap.get("id"), path, e)
        unlink(snap.get("state"))
        return warnings
