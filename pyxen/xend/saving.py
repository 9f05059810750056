"""``xm save`` and ``xm restore``: the guest's state streamed into a save
file (and back), the save as a job with its commit point, and the
recovery of a save an xend restart interrupted.

Both directions run QEMU's migration stream over a file descriptor
(monitor.py's :class:`MigrationStream`); a worker thread hashes the same
bytes, so a restore runs the guest only if the file is intact.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from .. import faults
from ..config import sxp
from ..hypervisor.qemu import process, qemulog
from ..hypervisor.qemu.monitor import QMPError, quietly
from ..store import StoreError
from . import checkpoint, features, jobs, userpath
from .errors import InvalidRequest, XendError

log = logging.getLogger("pyxen.domain")

# Saving to a file: QEMU's default cap (128 MiB/s) would make the disk wait
# for QEMU; libvirt also lifts it for saves.
SAVE_BANDWIDTH = 1 << 40
SAVE_STALL = 60.0           # seconds without a byte of stream before a save is abandoned
RESTORE_BASE = 120.0        # a restore gets this long plus ...
RESTORE_RATE = 20 << 20     # ... its stream length at this many bytes/s


def save_target(path: str) -> str:
    """Where ``xm save`` may write: the rule of every user-named path."""
    return userpath.check(path, "save file")


def phases(marks: dict, order: tuple) -> dict:
    """Seconds each step took, from the monotonic times it ended."""
    out, prev = {}, marks["start"]
    for k in order:
        if k in marks:
            out[k] = round(marks[k] - prev, 3)
            prev = marks[k]
    return out


class DomainSaving:
    """Mixed into Domain: save, restore's load, and the outgoing stream's
    cancel shared with live migration."""

    def qemu_alive(self) -> bool:
        return bool(self.pid) and process.alive(self.pid)

    async def save(self, path: str, keep: bool = False) -> dict:
        """``xm save``: write the guest's state and config to *path*, then
        destroy the domain (or, with *keep* — ``-c`` — let it run on).
        On any failure the file is not created and the guest runs again
        (unless it was paused before)."""
        self.refuse_if_busy("save")
        async with self.lock:
            self.require_live("save")
            return await self._save_locked(path, keep)

    async def _save_locked(self, path: str, keep: bool) -> dict:
        loop = asyncio.get_running_loop()
        target = save_target(path)
        t0 = time.monotonic()
        # The machine as it booted: the restore must rebuild it (issue 15).
        config = sxp.to_string(self.booted_config().to_sxp())
        meta = await self.save_meta()
        resume = not self.paused
        try:
            fd, tmp = userpath.create_temp(target, ".pyxen-save")
        except OSError as e:
            raise XendError(f"Unable to create save file {target}: {e.strerror}") from None
        self.job = jobs.Job("save", "saving", file=target, tmp=tmp, resume=resume, checkpoint=keep)
        stream = 0
        self.marks = {"start": t0}
        try:
            try:
                self.persist()
                if resume:
                    await self.monitor.stop()
                else:
                    await self.leave_postmigrate()
                self.marks["stop"] = time.monotonic()
                offset = len(checkpoint.encode_header(config, meta, 0, b""))
                stream, digest = await self._stream_out(fd, tmp, offset)
                header = checkpoint.encode_header(config, meta, stream, digest)
                await loop.run_in_executor(None, checkpoint.finish_file, fd, header)
                self.marks["sync"] = time.monotonic()
            finally:
                os.close(fd)
            # A file xm restore would refuse must not cost the domain: read
            # it back the way a restore does before the commit point.
            try:
                await loop.run_in_executor(None, checkpoint.read_header, tmp)
            except checkpoint.SaveFileError as e:
                raise XendError(f"the written file does not read back ({e})") from None
            faults.point("save-before-commit")
            # The commit point: from here an xend restart finishes the save.
            self.job["phase"] = "commit"
            self.persist()
            faults.point("save-after-commit")
            userpath.commit(tmp, target, "save file")
        except BaseException as e:
            await self._save_failed(tmp, resume)
            if isinstance(e, OSError):
                raise XendError(f"Cannot save domain {self.name} to {target}: "
                                f"{e.strerror or e}{self._still()}") from None
            if isinstance(e, (QMPError, StoreError)):
                raise XendError(f"Cannot save domain {self.name} to {target}: {e}{self._still()}") from None
            if isinstance(e, XendError):
                raise type(e)(f"{e}{self._still()}") from None
            raise
        try:
            await loop.run_in_executor(None, checkpoint.fsync_dir, target)
        except OSError as e:
            log.warning("%s: fsync of %s's directory failed: %s", self.name, target, e.strerror)
        self.marks["commit"] = time.monotonic()
        times = phases(self.marks, ("stop", "stream", "hash", "sync", "commit"))
        await self.finish_save(resume, keep)
        elapsed = time.monotonic() - t0
        log.info("%s: saved to %s: %d bytes of QEMU state in %.2f s (%s; %s %.2f s)", self.name, target,
                 stream, elapsed, ", ".join(f"{k} {v:.2f} s" for k, v in times.items()),
                 "resume" if keep else "destroy", time.monotonic() - self.marks["commit"])
        return {"file": target, "bytes": os.path.getsize(target), "stream_bytes": stream,
                "seconds": round(elapsed, 3), "phases": times}

    def _still(self) -> str:
        if self.gone.is_set() or self.pid is None or not process.alive(self.pid):
            return ""
        return f"; domain {self.name} is still {'paused' if self.paused else 'running'}"

    async def save_meta(self) -> dict:
        """What a save file or a migration records of the QEMU it came from."""
        mon = self.monitor
        return {"qemu": await mon.version(), "machine": await mon.machine_type(), "accel": self.accel,
                "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": socket.gethostname(), "domid": self.domid, "paused": self.paused,
                "memory": self.cfg.memory, "sedf": dict(self.sedf), **features.save_meta(self.feature_context())}

    async def _stream_out(self, fd: int, tmp: str, offset: int,
                          switchover=None) -> tuple[int, bytes]:
        """Run QEMU's outgoing migration straight into *fd* (the temp file
        *tmp*) from *offset* on, while a worker thread hashes what it
        writes.  Returns (stream length, digest).  With *switchover* (a
        coroutine function; QEMU has pause-before-switchover on), it is
        awaited when the guest has stopped for the last pass, before QEMU
        lets go of the disks (a live snapshot takes its disks then)."""
        loop = asyncio.get_running_loop()
        mon = self.monitor
        stream = mon.migration
        # Set either way: QEMU keeps a capability from one migration to the next.
        await stream.enable_events(pause_before_switchover=switchover is not None)
        await mon.migrate_set_parameters(max_bandwidth=SAVE_BANDWIDTH)
        # QEMU gets a copy of this descriptor, sharing its file offset.
        os.lseek(fd, offset, os.SEEK_SET)
        await mon.send_fd(fd, "pyxen-save")
        follower = checkpoint.Follower(tmp, offset)
        task = loop.run_in_executor(None, follower.run)
        try:
            try:
                await stream.start_out("pyxen-save")
            except BaseException:
                await quietly(mon.close_fd("pyxen-save"))
                raise
            await self._watch_save(fd, task, switchover)
            self.marks["stream"] = time.monotonic()
            # QEMU flushed everything before it reported completion.
            end = os.fstat(fd).st_size
            follower.finish(end)
            digest = await task
            self.marks["hash"] = time.monotonic()
            return end - offset, digest
        except BaseException:
            follower.cancel()
            await stream.cancel(self.qemu_alive)
            try:
                await asyncio.wait_for(asyncio.shield(task), 30)
            except BaseException:
                pass
            raise

    async def _watch_save(self, fd: int, task, switchover=None) -> None:
        """Until QEMU reports the migration complete.  Raises on a QEMU
        failure (ENOSPC included), a hashing error or a stall."""
        progress = {"size": -1, "t": time.monotonic()}
        stream = self.monitor.migration

        def check() -> bool:
            if switchover is not None and stream.status == "pre-switchover":
                return False
            if task.done():
                task.result()           # the hashing worker failed
            size = os.fstat(fd).st_size
            if size != progress["size"]:
                progress.update(size=size, t=time.monotonic())
            elif time.monotonic() - progress["t"] > SAVE_STALL:
                raise XendError(f"the save made no progress for {SAVE_STALL:.0f} s")
            return True

        status = await stream.wait_done(None, tick=1.0, poll=True, check=check)
        if status is None and switchover is not None:
            await switchover()
            await self.monitor.migrate_continue()
            switchover = None
            status = await stream.wait_done(None, tick=1.0, poll=True, check=check)
        if status != "completed":
            raise XendError(f"QEMU could not save the guest: {await stream.error(status)}")

    async def leave_postmigrate(self) -> None:
        """A paused guest whose last save completed (xm save -c) sits in
        QEMU's 'postmigrate' state, from which QEMU refuses to migrate
        again; running is the only way out, so it runs for an instant."""
        if await self.monitor.status() == "postmigrate":
            log.info("%s: paused after an earlier save; resuming it for an instant to save again",
                     self.name)
            await self.monitor.cont()
            await self.monitor.stop()

    async def _save_failed(self, tmp: str, resume: bool) -> None:
        """Roll a save back: no file, and the guest as it was."""
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("%s: cannot remove %s: %s", self.name, tmp, e.strerror)
        if resume and self.pid and process.alive(self.pid) and self.monitor is not None:
            if await self.try_cont():
                self.paused = False
        self.job = None
        self.persist_quietly()

    async def try_cont(self) -> bool:
        """Run the guest again, best effort: False if QEMU would not."""
        if self.monitor is None:
            return False
        try:
            await self.monitor.cont()
            return True
        except Exception as e:
            log.debug("%s: cont: %s", self.name, e)
            return False

    async def finish_save(self, resume: bool, keep: bool) -> None:
        if keep:
            # The file is safe by now: a failure to resume is logged, not
            # reported as a failed save.
            if resume:
                if await self.try_cont():
                    self.paused = False
                else:
                    log.error("%s: could not resume the guest after its checkpoint", self.name)
            self.job = None
            self.persist_quietly()
        else:
            await self.destroy_locked()

    async def cancel_outgoing(self, resume: bool) -> bool:
        """Stop QEMU's outgoing migration (a save or a live migration being
        rolled back), wait until it has really ended, then run the guest
        again if it ran before (*resume*), else leave it paused.  False if
        it should run but would not resume."""
        if self.monitor is not None:
            await self.monitor.migration.cancel(self.qemu_alive)
        cluster = getattr(self.services, "cluster", None)
        if not resume or (cluster is not None and not cluster.may_run(self.uuid)):
            # (Checked here, after the awaits: the cluster fence may have
            # paused it meanwhile — this host lost etcd, e.g. the reason the
            # migration failed — and then only the fencer resumes it, once
            # this host holds its lock again.)
            self.paused = True
            return True
        if await self.try_cont():
            self.paused = False
            return True
        return False

    async def load(self, info: "checkpoint.SaveInfo") -> None:
        """Restore: QEMU (started with ``-incoming defer``) reads the stream
        straight from the save file while a worker hashes the same bytes;
        the guest may run only if the digest matches."""
        loop = asyncio.get_running_loop()
        mon = self.monitor
        stream = mon.migration
        await stream.enable_events()
        fd = os.open(info.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.lseek(fd, info.stream_offset, os.SEEK_SET)
            # QEMU reads in 32 KiB steps: a wide readahead on its (shared)
            # file description keeps the disk ahead of it.
            os.posix_fadvise(fd, info.stream_offset, info.stream_length, os.POSIX_FADV_SEQUENTIAL)
            await mon.send_fd(fd, "pyxen-restore")
        finally:
            os.close(fd)
        verifier = checkpoint.Verifier(info)
        vtask = loop.run_in_executor(None, verifier.run)
        problem = None
        try:
            try:
                await stream.start_in("pyxen-restore")
                # QEMU's main loop is busy while it reads a file, so this waits
                # on events and on the process, not on query-migrate.
                status = await stream.wait_done(RESTORE_BASE + info.stream_length / RESTORE_RATE,
                                                tick=0.5, poll=False, check=self.qemu_alive)
                if status is None:
                    problem = ("QEMU exited while loading it" if not self.qemu_alive()
                               else "QEMU did not finish loading it in time")
                elif status != "completed":
                    problem = f"QEMU could not load it (migration {status})"
            except QMPError as e:
                problem = f"QEMU could not load it: {e}"
            self.marks["load"] = time.monotonic()
            # Even when QEMU failed, the checksum tells a damaged file (the
            # likely cause) from an incompatible one.
            intact = await vtask
            self.marks["verify"] = time.monotonic()
        except OSError as e:
            raise XendError(f"Unable to read save file {info.path}: {e.strerror}") from None
        except BaseException:
            verifier.cancel()
            raise
        if not intact:
            raise InvalidRequest(f"{info.path} is corrupt: the checksum of its QEMU state does not "
                                 f"match; domain {self.name} was not restored")
        if problem is not None:
            m = info.meta
            raise XendError(f"Cannot restore {info.path}: {problem} (saved by QEMU {m.get('qemu', '?')}, "
                            f"machine {m.get('machine', '?')}, {m.get('accel', '?')})"
                            + qemulog.reason(self.runtime().qemu_log, self.qemu_log_start))
        times = phases(self.marks, ("qemu", "load", "verify"))
        log.info("%s: loaded %d bytes of saved state from %s (%s)", self.name, info.stream_length, info.path,
                 ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))


@jobs.recovers("save")
async def recover_save(dom, job: dict) -> None:
    """After an xend restart: finish a save that had passed its commit
    point, roll back one that had not.  QEMU may be gone."""
    alive = dom.monitor is not None and dom.pid is not None and process.alive(dom.pid)
    tmp, target = job.get("tmp"), job.get("file")
    committed = job.get("phase") == "commit"
    if committed and tmp and os.path.exists(tmp):
        try:
            userpath.commit(tmp, target, "save file")
            checkpoint.fsync_dir(target)
        except InvalidRequest as e:     # something else took the target's place meanwhile
            log.error("%s: %s", dom.name, e)
            committed = False
    if committed:
        log.info("%s: finished the save to %s interrupted by xend's exit", dom.name, target)
        if job.get("checkpoint"):
            if alive:
                async with dom.lock:
                    await dom.finish_save(bool(job.get("resume")), True)
            else:
                dom.job = None       # QEMU died: a crash, handled as one
                dom.persist()
            return
        async with dom.lock:
            await dom.destroy_locked()
        return
    log.info("%s: rolling back the save to %s interrupted by xend's exit", dom.name, target)
    if tmp:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    if alive:
        await dom.cancel_outgoing(bool(job.get("resume")))
    dom.job = None
    dom.persist()
