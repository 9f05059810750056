"""The one rule of every state-changing domain operation: its new state is
persisted before success is reported, or its effect is undone.

An operation runs its change inside :func:`change`::

    async with durable.change(dom, "pause") as ch:
        await dom.monitor.stop()
        ch.undo(dom.monitor.cont)      # how to take the act back
        dom.paused = True

When the block ends the domain's record (and with ``config=True`` its
config) is written through the store.  If that write fails — a full state
disk is the case that matters (issue 15 item 4) — the domain's in-memory
state goes back to what it was when the block began, the registered undos
run newest first (QEMU goes back to what the record still says), and the
caller gets :class:`StateNotSaved`: one line naming the operation and the
store's own reason ("no space left on <path>").  So the record always
matches QEMU, and an ``xend restart`` adopts the domain as it really is.

An operation whose act cannot be taken back (a guest asked to shut down)
persists first: the block holds only the in-memory change, and the act
follows the block.  An exception raised inside the block is the
operation's own failure: it propagates untouched (its code rolls back what
it started), and nothing is persisted.

Destroy is the exception to the rule, by design: a destroy on a full disk
still destroys (the store's deletes need no space, filestore.py), because a
record that outlives its QEMU is harmless to adopt, while a QEMU that
outlives a refused destroy is what the user wanted gone.
"""

from __future__ import annotations

import copy
import logging
from contextlib import asynccontextmanager
from typing import Awaitable, Callable

from ..store import StoreError
from .errors import XendError

log = logging.getLogger("pyxen.domain")

# The in-memory fields of a Domain that a runtime record holds (domain.py's
# runtime_record); the config is copied whole.
_FIELDS = ("_state", "paused", "sedf", "shutdown_reason", "shutdown_requested", "vif_devids",
           "vif_next_devid", "vifs_up", "job", "start_time")


class StateNotSaved(XendError):
    """The operation's new state could not be persisted, so it was undone."""
    status = 507            # Insufficient Storage: the server, not the request
    code = "state_not_saved"


class Change:
    def __init__(self, dom, op: str):
        self.dom, self.op = dom, op
        self.undos: list[Callable[[], Awaitable]] = []
        self.saved_cfg = copy.deepcopy(dom.cfg)
        self.saved = {f: copy.deepcopy(getattr(dom, f, None)) for f in _FIELDS}

    def undo(self, fn: Callable[[], Awaitable]) -> None:
        """Register how to take back an act done so far (run if persisting fails)."""
        self.undos.append(fn)

    async def roll_back(self, why: Exception) -> None:
        dom = self.dom
        # In place: the registry, features and the views hold this very object.
        vars(dom.cfg).clear()
        vars(dom.cfg).update(vars(self.saved_cfg))
        for f, v in self.saved.items():
            setattr(dom, f, v)
        for fn in reversed(self.undos):
            try:
                await fn()
            except Exception as e:
                # The record was not changed, so it is the truth xend
                # restarts from; say loudly that QEMU may differ from it.
                log.error("%s: cannot undo %s after the state write failed (%s): %s; "
                          "QEMU may differ from the record until it is retried", dom.name, self.op, why, e)
        log.error("%s: %s undone: %s", dom.name, self.op, why)


@asynccontextmanager
async def change(dom, op: str, config: bool = False):
    """Run one operation's change, then persist it or undo it (module doc)."""
    ch = Change(dom, op)
    yield ch
    try:
        dom.persist(config=config)
    except StoreError as e:
        await ch.roll_back(e)
        raise StateNotSaved(f"{op} of domain {dom.name} was not done: {e}") from None


def persist_or_log(dom, what: str) -> bool:
    """For the steps that must go on whatever the disk says (destroy): try
    to record, log when it cannot be."""
    try:
        dom.persist()
        return True
    except StoreError as e:
        log.error("%s: %s goes on without its state recorded: %s", dom.name, what, e)
        return False
