"""Long operations on a domain (save, live migration, snapshot create and revert) as jobs: what each
records, which operations may run beside it, and how an xend that
restarts finishes or rolls back one it left behind.

A job is persisted in the domain's runtime record (``job``), so it is a
dict — :class:`Job` adds names for what every job has (its kind and phase).
While one runs, the domain's lock is held: an operation refused beside it
fails at once (409) rather than queue behind a save that may take minutes;
one allowed beside it either needs no lock (a view, the device-model
monitor) or waits for the lock (the config-only changes below).

Recovery after an xend restart is looked up by the job's kind in
:data:`RECOVERY`; the module that runs a kind of job registers its
recovery there (:func:`recovers`), so this module imports none of them.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from ..ops.table import BY_NAME as OPS_BY_NAME
from .errors import Conflict

log = logging.getLogger("pyxen.domain")

KINDS = ("save", "migrate", "snapshot-create", "snapshot-revert")

# Operations (by their names in the operation table, pyxen.ops.table) that
# may be asked of a domain while a job runs: the table says it, once, for
# each long operation.  Everything else that acts on the domain is refused
# while one runs.  (xend's own roll-backs -- a failed create, an arriving
# migration given up -- destroy the domain whatever runs:
# Domain.destroy(force=True).)
BESIDE: dict[str, frozenset[str]] = {kind: frozenset(OPS_BY_NAME[kind].beside) for kind in KINDS}


class Job(dict):
    """A job's persisted record: ``op`` (its kind), ``phase``, and what
    the kind needs to finish or roll it back."""

    def __init__(self, kind: str, phase: str, **fields: Any):
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        super().__init__(op=kind, phase=phase, **fields)

    @property
    def kind(self) -> str:
        return self["op"]

    @property
    def phase(self) -> str:
        return self.get("phase", "")

    @classmethod
    def from_record(cls, rec) -> "Job | None":
        """A job an earlier xend recorded (None: none, or not a job)."""
        if not isinstance(rec, dict) or not rec:
            return None
        job = dict.__new__(cls)
        dict.__init__(job, rec)
        return job


def may_run_beside(job: dict | None, op: str) -> bool:
    if not job:
        return True
    return op in BESIDE.get(str(job.get("op")), frozenset())


def refuse_beside(job: dict | None, op: str, name: str) -> None:
    """Conflict (409) when *op* may not run on domain *name* beside *job*."""
    if not may_run_beside(job, op):
        raise Conflict(f"Domain {name} is busy: {job.get('op', 'an operation')} in progress")


Recovery = Callable[[Any, dict], Awaitable[None]]
RECOVERY: dict[str, Recovery] = {}


def recovers(kind: str) -> Callable[[Recovery], Recovery]:
    """Register the function that finishes or rolls back a *kind* job."""
    def deco(fn: Recovery) -> Recovery:
        RECOVERY[kind] = fn
        return fn
    return deco


def recovery_for(job: dict) -> Recovery | None:
    return RECOVERY.get(str(job.get("op")))
