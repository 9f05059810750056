"""Live migration with local disks (``xm migrate --copy-storage``): what
the two ends do to the disks beside migration.py's memory stream.

* The source describes each writable file-backed disk (path, format,
  virtual size, allocation, qcow2 backing chain) in the (receive ...)
  request, and leaves a probe file beside each so the target can tell a
  directory both hosts see.
* The target decides per disk (:func:`plan`): **shared** (the probe is
  visible and the image there has the source's size: not copied),
  **backing** (qcow2 whose every backing file exists there with the same
  size: a new top image on the same chain, mirrored ``sync=top``) or
  **copy** (a new standalone image of the same virtual size and format,
  mirrored ``sync=full``; a qcow2 is flattened).  An existing file that is
  not the source's is never overwritten: refused.  Space is checked
  (statvfs) before anything is created: a raw image needs its virtual
  size even when sparse on the source.  What it creates is journalled
  first (:class:`Journal`), so a failure, or the next xend after a crash,
  removes exactly that.
* The target's QEMU exports the new disks from its NBD server, over
  QEMU's own TLS with a key made for this migration (nbdtls.py); the
  source's QEMU adds an NBD client node per disk and mirrors into it
  (:class:`SourceMirror`) in write-blocking mode until every job is ready.
* The switch-over (libvirt's order, qemu_migration.c): the memory stream
  runs with ``pause-before-switchover``; once QEMU has stopped the guest
  there, each mirror is cancelled while ready — QEMU's way to finish it
  with a point-in-time copy and keep the source disk — and only then the
  stream goes on.  The target stops its NBD server before it resumes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import subprocess
from pathlib import Path

from ..config import sxp
from ..fileutil import atomic_write
from ..hypervisor.qemu.monitor import quietly
from . import nbdtls
from .errors import InvalidRequest

log = logging.getLogger("pyxen.domain.migrate")

PROBE = ".pyxen-migrate-probe-"
FORMATS = ("raw", "qcow2")          # what qemu-img recreates with the exact virtual size
QCOW2_SLACK = 1.02                  # qcow2 metadata beyond the data clusters
_VDEV = re.compile(r"[a-z]{2,4}[a-z0-9]{0,8}")
READY_TIMEOUT = 24 * 3600.0         # a mirror that never converges is the user's to cancel
FINISH_TIMEOUT = 60.0               # the last sync at the switch-over (guest stopped)
POLL = 0.1                          # query-jobs while the disks copy: readiness seen within 0.1 s, not 0.5


class StorageRefused(InvalidRequest):
    """The target cannot take the disks (space, an existing file, format)."""
    code = "storage_refused"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


# ================================================================ source
def copied_disks(cfg) -> list:
    """The disks --copy-storage moves: writable, file-backed (file:, tap:).
    phy: devices and read-only images must exist on the target as for a
    plain migration (a SAN LUN, an ISO library).  ``--shared-disk`` names
  some of these as shared (:func:`describe`)."""
    return [d for d in cfg.disks if d.kind in ("file", "tap") and not d.readonly and d.target]


def _img_info(path: str) -> list[dict]:
    # -U: the image is open (and locked) by the running QEMU.
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise InvalidRequest(f"cannot read disk image {path}: {out.stderr.strip()}")
    chain = json.loads(out.stdout)
    return chain if isinstance(chain, list) else [chain]


def check_shared(cfg, shared: list[str]) -> None:
    """``--shared-disk``: each name must be one of the disks --copy-storage
    would copy (InvalidRequest naming it otherwise)."""
    local = [d.vdev for d in copied_disks(cfg)]
    for v in shared:
        if v not in local:
            raise InvalidRequest(f"--shared-disk {v}: not a local disk of {cfg.name} that --copy-storage "
                                 f"would copy (those are: {', '.join(local) or 'none'})")


def check_snapshots(cfg, doc: dict, shared: list[str]) -> None:
    """--copy-storage of a domain whose snapshots keep disk state in a disk
    it would copy: refused (InvalidRequest), as the mirror carries a disk's
    current state only, never its qcow2 internal snapshots — the target's
    copy would have none and a revert there would find no tag."""
    copied = {d.target: d.vdev for d in copied_disks(cfg) if d.vdev not in shared}
    hit = {n: sorted({copied[p] for p in (s.get("paths") or []) if p in copied})
           for n, s in (doc.get("snapshots") or {}).items()}
    hit = {n: v for n, v in hit.items() if v}
    if hit:
        vdevs = sorted({v for vs in hit.values() for v in vs})
        raise InvalidRequest(f"{cfg.name} has snapshots ({', '.join(sorted(hit))}) kept inside disk(s) "
                             f"{', '.join(vdevs)}, which --copy-storage cannot carry (it copies a disk's current "
                             "state only): delete them first (xm snapshot-delete), or give those disks as "
                             "--shared-disk if the target sees the same files")


def describe(cfg, shared: list[str] = ()) -> tuple[list, list[Path]]:
    """The (storage ...) part of the request and the probe files placed
    (blocking: qemu-img).  The caller removes the probes when the target
    has answered.  Disks in *shared* (``--shared-disk``) are the user's
    word that the target sees the same file: sent as ``(shared 1)``, with
    no probe, whatever their format."""
    token = secrets.token_hex(8)
    disks, probes = [], []
    for d in copied_disks(cfg):
        if d.vdev in shared:
            disks.append(["disk", ["vdev", d.vdev], ["path", d.target], ["shared", 1],
                          ["file-size", os.stat(d.target).st_size]])
            continue
        chain = _img_info(d.target)
        top = chain[0]
        fmt = top.get("format", d.fmt)
        if fmt not in FORMATS:
            raise InvalidRequest(f"disk {d.vdev}: a {fmt} image cannot be copied (raw and qcow2 can); "
                                 "put it on storage both hosts share")
        probe = Path(d.target).parent / (PROBE + token)
        if probe not in probes:
            try:
                probe.touch(exist_ok=False)
                probes.append(probe)
            except OSError:
                pass        # no probe: the target cannot take it for shared storage
        entry = ["disk", ["vdev", d.vdev], ["path", d.target], ["format", fmt],
                 ["size", int(top["virtual-size"])], ["file-size", os.stat(d.target).st_size],
                 ["alloc", sum(int(c.get("actual-size", 0)) for c in chain)],
                 ["top-alloc", int(top.get("actual-size", 0))], ["probe", PROBE + token]]
        backing = [["image", ["path", c["filename"]], ["format", c.get("format", "raw")],
                    ["file-size", os.stat(c["filename"]).st_size]]
                   for c in chain[1:] if os.path.isfile(c.get("filename", ""))]
        if len(backing) == len(chain) - 1 and backing:
            entry.append(["backing", *backing])
        disks.append(entry)
    return ["storage", *disks], probes


def remove_probes(probes: list[Path]) -> None:
    for p in probes:
        try:
            p.unlink()
        except OSError:
            pass


# ================================================================ target
def parse(storage: list) -> list[dict]:
    """The source's (storage ...) as checked dicts; InvalidRequest on
    anything odd (a path that is not absolute, a bad vdev, a format
    qemu-img must not be asked for)."""
    disks = []
    for item in storage[1:]:
        if not isinstance(item, list) or not item or item[0] != "disk":
            raise InvalidRequest("bad (storage ...) entry")
        if sxp.child_value(item, "shared") is not None:
            disks.append(_parse_shared(item))
            continue
        v = {k: sxp.child_value(item, k) for k in ("vdev", "path", "format", "size", "file-size",
                                                    "alloc", "top-alloc", "probe")}
        try:
            for k in ("size", "file-size", "alloc", "top-alloc"):
                v[k] = int(v[k])
        except (TypeError, ValueError):
            raise InvalidRequest(f"bad sizes for disk {v.get('vdev')!r}") from None
        _check_name_path(v)
        if v["format"] not in FORMATS or v["size"] <= 0:
            raise InvalidRequest(f"disk {v['vdev']}: bad format or size")
        if not (isinstance(v["probe"], str) and re.fullmatch(re.escape(PROBE) + "[0-9a-f]{16}", v["probe"])):
            raise InvalidRequest(f"disk {v['vdev']}: bad probe name")
        v["backing"] = []
        back = sxp.child(item, "backing")
        for img in (back[1:] if back else []):
            if not isinstance(img, list):
                raise InvalidRequest(f"disk {v['vdev']}: bad backing image entry")
            p, f, n = (sxp.child_value(img, k) for k in ("path", "format", "file-size"))
            if not (isinstance(p, str) and os.path.isabs(p) and f in ("raw", "qcow2") and str(n).isdigit()):
                raise InvalidRequest(f"disk {v['vdev']}: bad backing image entry")
            v["backing"].append({"path": p, "format": f, "file-size": int(n)})
        disks.append(v)
    return disks


def _check_name_path(v: dict) -> None:
    if not isinstance(v["vdev"], str) or not _VDEV.fullmatch(v["vdev"]):
        raise InvalidRequest(f"bad disk name {v['vdev']!r}")
    if not isinstance(v["path"], str) or not os.path.isabs(v["path"]) or "\0" in v["path"]:
        raise InvalidRequest(f"disk {v['vdev']}: the path must be absolute")


def _parse_shared(item: list) -> dict:
    v = {k: sxp.child_value(item, k) for k in ("vdev", "path", "file-size")}
    _check_name_path(v)
    if not str(v["file-size"]).isdigit():
        raise InvalidRequest(f"bad sizes for disk {v['vdev']!r}")
    return {**v, "file-size": int(v["file-size"]), "user-shared": True, "backing": []}


def plan(disks: list[dict]) -> list[dict]:
    """Decide each disk's fate (adds ``how``: shared, backing or copy) or
    refuse (StorageRefused) before anything is created."""
    need: dict[int, list] = {}          # st_dev -> [(bytes, vdev, dir, why)]
    for d in disks:
        path = Path(d["path"])
        if d.get("user-shared"):
            # The user said so (--shared-disk): only checked to be there.
            if not path.is_file():
                raise StorageRefused(f"disk {d['vdev']} was given as shared (--shared-disk) but {path} "
                                     "is not a file on this host")
            if path.stat().st_size != d["file-size"]:
                raise StorageRefused(f"disk {d['vdev']} was given as shared (--shared-disk) but {path} on "
                                     f"this host has another size ({path.stat().st_size} bytes, the source's "
                                     f"{d['file-size']}): not the same file")
            d["how"] = "shared"
            continue
        probe = path.parent / d["probe"]
        if path.exists() or path.is_symlink():
            if probe.exists() and path.is_file() and path.stat().st_size == d["file-size"]:
                d["how"] = "shared"
                continue
            raise StorageRefused(f"disk {d['vdev']}: {path} already exists on this host and is not the "
                                 "source's image (no shared storage seen); refusing to overwrite it")
        if not path.parent.is_dir():
            raise StorageRefused(f"disk {d['vdev']}: directory {path.parent} does not exist on this host")
        kept = d["format"] == "qcow2" and d["backing"] and all(
            os.path.isfile(b["path"]) and os.stat(b["path"]).st_size == b["file-size"] for b in d["backing"])
        d["how"] = "backing" if kept else ("flatten" if d["backing"] else "copy")
        if d["format"] == "raw":
            size = d["size"]
            why = (f"the raw image's virtual size; it is sparse on the source ({_mib(d['alloc'])} allocated) "
                   "but its copy may fill it") if d["alloc"] < d["size"] else "the raw image's size"
        else:
            size = int(min(d["size"], d["top-alloc"] if kept else d["alloc"]) * QCOW2_SLACK) + (1 << 20)
            why = "the qcow2 data to copy" + (" (its backing chain is here)" if kept else " (flattened)")
        need.setdefault(os.stat(path.parent).st_dev, []).append((size, d["vdev"], path.parent, why))
    for items in need.values():
        st = os.statvfs(items[0][2])
        free = st.f_bavail * st.f_frsize
        total = sum(i[0] for i in items)
        if total > free:
            what = ", ".join(f"{v} {_mib(n)} ({why})" for n, v, _, why in items)
            raise StorageRefused(f"not enough space in {items[0][2]} on this host: the disks need "
                                 f"{_mib(total)} ({what}), {_mib(free)} free")
    return disks


HOWS = {"shared": "shared, not copied", "backing": "copied, backing chain kept",
        "flatten": "copied, flattened (its backing file is not on the target)", "copy": "copied"}


def summary(hows: dict[str, str]) -> str:
    """What happened to each disk, for the result and the log."""
    return "; ".join(f"{v} {HOWS[h]}" for v, h in hows.items()) or "no local disks"


class Journal:
    """The disk files a target created for one arriving domain, recorded
    before each is created: removed on failure, and by the next xend if
    this one dies first (:func:`recover`)."""

    def __init__(self, lib: Path, uuid: str):
        self.path = lib / "incoming-disks" / f"{uuid}.json"
        self.files: list[dict] = []

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self.files).encode())

    def create(self, disks: list[dict]) -> None:
        """Create each disk to copy (blocking: qemu-img)."""
        for d in disks:
            if d["how"] == "shared":
                continue
            entry = {"path": d["path"], "ino": None}
            self.files.append(entry)
            self._write()
            argv = ["qemu-img", "create", "-q", "-f", d["format"]]
            if d["how"] == "backing":
                argv += ["-b", d["backing"][0]["path"], "-F", d["backing"][0]["format"]]
            res = subprocess.run(argv + [d["path"], str(d["size"])], capture_output=True, text=True,
                                 timeout=120)
            if res.returncode != 0:
                raise StorageRefused(f"disk {d['vdev']}: cannot create {d['path']}: {res.stderr.strip()}")
            entry["ino"] = os.stat(d["path"]).st_ino
            self._write()

    def remove(self) -> None:
        """Remove what was created (only files that are still ours) and the record."""
        for f in self.files:
            try:
                if f.get("ino") is None or os.stat(f["path"]).st_ino == f["ino"]:
                    os.unlink(f["path"])
                    log.info("removed %s (created for a migration that did not happen)", f["path"])
            except OSError:
                pass
        self.forget()

    def forget(self) -> None:
        """The domain arrived: its disks are its own now."""
        try:
            self.path.unlink()
        except OSError:
            pass


def recover(lib: Path, running: set[str]) -> None:
    """At xend start: journals of arriving domains that never ran here
    (the migration was cut by this xend's death) — their files go."""
    d = lib / "incoming-disks"
    if not d.is_dir():
        return
    for p in d.glob("*.json"):
        j = Journal(lib, p.stem)
        try:
            j.files = json.loads(p.read_text())
        except (OSError, ValueError):
            j.files = []
        if p.stem in running:
            j.forget()
        else:
            log.info("incoming migration of %s was interrupted: removing the disks it created", p.stem)
            j.remove()


async def export(dom, disks: list[dict], addr: str, ports) -> dict | None:
    """Start the target QEMU's NBD server (TLS-PSK on *addr*, xend/nbdtls.py)
    and export each disk to copy, writable; what the source needs to
    connect (``{"port", "user", "key"}``), None when nothing is copied."""
    todo = [d for d in disks if d["how"] != "shared"]
    if not todo:
        return None
    mon = dom.monitor
    nbd = await nbdtls.serve(mon, dom.paths.domain_run(dom.domid), dom.qemu_ident, addr, ports)
    for d in todo:
        await mon.block_export_add(f"mig-{d['vdev']}", f"d-{d['vdev']}", d["vdev"])
    return nbd


async def unexport(dom) -> None:
    """Before the target resumes the guest (and when it gives up): no NBD
    client may write any more."""
    await nbdtls.stop(dom.monitor, dom.paths.domain_run(dom.domid))


def reply(disks: list[dict], nbd: dict | None) -> list:
    out = ["storage"]
    if nbd is not None:
        out.append(["nbd", ["port", nbd["port"]], ["user", nbd["user"]], ["key", nbd["key"]]])
    return out + [["disk", ["vdev", d["vdev"]], ["how", d["how"]]] for d in disks]


def parse_reply(values: list) -> tuple[dict | None, dict[str, str]]:
    """({port, user, key} or None, {vdev: how}) from the target's
    (ok (domid N) (storage ...))."""
    for v in values:
        if isinstance(v, list) and v and v[0] == "storage":
            hows = {str(sxp.child_value(d, "vdev")): str(sxp.child_value(d, "how"))
                    for d in v[1:] if isinstance(d, list) and d and d[0] == "disk"}
            if not all(h in HOWS for h in hows.values()):
                raise InvalidRequest("the target's storage answer is malformed")
            nbd = None
            entry = sxp.child(v, "nbd")
            if entry is not None:
                nbd = {k: str(sxp.child_value(entry, k, "")) for k in ("port", "user", "key")}
                if not (nbd["port"].isdigit() and 0 < int(nbd["port"]) < 65536
                        and re.fullmatch(r"pyxen-[0-9a-f]{8}", nbd["user"])
                        and re.fullmatch(r"[0-9a-f]{64}", nbd["key"])):
                    raise InvalidRequest("the target's storage answer is malformed")
                nbd["port"] = int(nbd["port"])
            if nbd is None and any(h != "shared" for h in hows.values()):
                raise InvalidRequest("the target copies disks but gave no NBD channel (an older xend?)")
            return nbd, hows
    raise InvalidRequest("the target does not copy storage (an older xend?)")


# ============================================================ the mirror
class SourceMirror:
    """The source QEMU's mirror jobs into the target's NBD exports."""

    def __init__(self, dom, hows: dict[str, str], nbd: dict | None, host: str = "", speed: int = 0):
        # *nbd*: the target's answer (port, PSK user and key); *host*: its
        # address, the one the relocation connection reached.
        # *speed*: bytes/s for each disk's copy (xm migrate -r), 0 unlimited.
        self.dom, self.hows, self.nbd, self.host, self.speed = dom, hows, nbd, host, speed
        self.vdevs = [v for v, h in hows.items() if h != "shared"]
        self.started: list[str] = []
        self.nodes: list[str] = []
        self.progress: dict = {}

    async def start(self) -> None:
        mon = self.dom.monitor
        creds = await nbdtls.client(mon, self.dom.paths.domain_run(self.dom.domid), self.dom.qemu_ident,
                                    self.nbd["user"], self.nbd["key"])
        for v in self.vdevs:
            node = f"nbd-{v}"
            # keep-alive: a target that vanishes fails the mirror instead
            # of holding the guest's writes (write-blocking) for TCP's hours.
            self.nodes.append(node)
            await mon.blockdev_add({"driver": "nbd", "node-name": node, "export": v, "tls-creds": creds,
                                    "server": {"type": "inet", "host": self.host, "port": str(self.nbd["port"]),
                                               "keep-alive": True}})
            await mon.blockdev_mirror(f"mig-{v}", f"d-{v}", node, "top" if self.hows[v] == "backing" else "full",
                                      speed=self.speed)
            self.started.append(f"mig-{v}")

    async def jobs(self) -> dict[str, dict]:
        return {j["id"]: j for j in await self.dom.monitor.query_jobs() if j.get("id") in self.started}

    def _note(self, jobs: dict[str, dict]) -> None:
        done = sum(int(j.get("current-progress", 0)) for j in jobs.values())
        total = sum(int(j.get("total-progress", 0)) for j in jobs.values())
        ready = sum(1 for j in jobs.values() if j.get("status") == "ready")
        self.progress = {"transferred": done, "total": total, "ready": ready, "disks": len(self.started)}

    async def _failed(self, jobs: dict[str, dict]) -> str | None:
        for jid in self.started:
            j = jobs.get(jid)
            if j is None:
                return f"the copy of disk {jid[4:]} vanished"
            if j.get("status") in ("concluded", "null", "aborting"):
                return f"copying disk {jid[4:]} failed: {j.get('error') or j.get('status')}"
        return None

    async def wait_ready(self, report, check) -> None:
        """Until every mirror is ready (source and target in sync);
        *report* after each look, *check* raises when the link failed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while True:
            jobs = await self.jobs()
            self._note(jobs)
            why = await self._failed(jobs)
            if why:
                raise InvalidRequest(why)
            report()
            if all(j.get("status") == "ready" for j in jobs.values()):
                return
            await check()
            if loop.time() > deadline:
                raise InvalidRequest("the disks did not get in sync")
            await asyncio.sleep(POLL)

    async def finish(self) -> None:
        """At the switch-over, the guest stopped: each ready mirror ends
        with a point-in-time copy (block-job-cancel on a ready job); the
        source keeps its disks."""
        mon = self.dom.monitor
        for jid in self.started:
            await mon.block_job_cancel(jid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINISH_TIMEOUT
        while True:
            jobs = await self.jobs()
            left = [j for j in jobs.values() if j.get("status") != "concluded"]
            if not left:
                break
            if loop.time() > deadline:
                raise InvalidRequest("the disks' last sync did not end in time")
            await asyncio.sleep(0.01)
        errors = [f"disk {j['id'][4:]}: {j['error']}" for j in jobs.values() if j.get("error")]
        for jid in self.started:
            await quietly(mon.job_dismiss(jid))
        self.started = []
        if errors:
            raise InvalidRequest("the disks' last sync failed: " + "; ".join(errors))

    async def abort(self) -> None:
        """Before the commit point: drop the mirrors and the NBD nodes; the
        source's disks are as the guest left them."""
        mon = self.dom.monitor
        if mon is None:
            return
        for jid in self.started:
            await quietly(mon.block_job_cancel(jid, force=True))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while self.started and loop.time() < deadline:
            jobs = await quietly(self.jobs()) or {}
            if all(j.get("status") == "concluded" for j in jobs.values()):
                break
            await asyncio.sleep(0.05)
        for jid in self.started:
            await quietly(mon.job_dismiss(jid))
        for node in self.nodes:
            await quietly(mon.blockdev_del(node))
        await nbdtls.drop_client(mon)
        self.started, self.nodes = [], []


async def clean_source(dom, vdevs: list[str]) -> None:
    """After an xend restart on the source: mirrors and NBD nodes an
    interrupted storage migration left in the running QEMU."""
    m = SourceMirror(dom, {v: "copy" for v in vdevs}, None)
    m.started = [f"mig-{v}" for v in vdevs]
    m.nodes = [f"nbd-{v}" for v in vdevs]
    await m.abort()
