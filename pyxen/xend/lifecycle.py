"""A domain's lifecycle: its states, the legal moves between them, and the
on_* policy as pure functions (no QEMU, no store: unit-testable).

States::

    creating ──> running ──> shutdown | crashed   (kept when the action is preserve)
       │  ^         │  │            │
       │  └─────────┘  └──> dying <─┘              (a QEMU that died and restarts
       │  (restart after         │                   goes back to creating)
       │   QEMU died)            v
       └──────────────────────> gone
    incoming ──> running        (a migration arriving: running once the source commits)
       └──────> dying

Paused is a flag beside ``running``, as in Xen.  A restore is a create
that loads QEMU's state instead of booting, so it shares ``creating``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(str, enum.Enum):
    """A domain's lifecycle state; the value is what the store records."""
    CREATING = "creating"
    INCOMING = "incoming"
    RUNNING = "running"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"
    DYING = "dying"

    def __str__(self) -> str:
        return self.value


S = State
# Staying in a state is always allowed (a destroy retried, an adopt).
TRANSITIONS: dict[State, frozenset[State]] = {
    S.CREATING: frozenset({S.INCOMING, S.RUNNING, S.DYING}),
    S.INCOMING: frozenset({S.RUNNING, S.DYING}),
    S.RUNNING: frozenset({S.SHUTDOWN, S.CRASHED, S.DYING, S.CREATING}),
    # A preserved domain whose QEMU then dies follows on_crash.
    S.SHUTDOWN: frozenset({S.CRASHED, S.CREATING, S.DYING}),
    S.CRASHED: frozenset({S.CREATING, S.DYING}),
    S.DYING: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


def check_transition(old: State, new: State) -> State:
    """*new* if a domain in *old* may move there; IllegalTransition if not."""
    new = State(new)
    if new != old and new not in TRANSITIONS[State(old)]:
        raise IllegalTransition(f"a domain cannot go from {old} to {new}")
    return new


def stored_state(value) -> State:
    """The state an earlier xend recorded (running when unknown)."""
    try:
        return State(value)
    except ValueError:
        return State.RUNNING


# ------------------------------------------------------------------ policy
@dataclass(frozen=True)
class Action:
    """What to do when the guest stopped: dump its core first or not, then
    one of ``restart`` (in place), ``rename-restart``, ``preserve`` or
    ``destroy``.  *reset*: a restart needs QEMU's reset (a reboot already
    did it); *note*: why the configured action was not taken."""
    kind: str
    coredump: bool = False
    reset: bool = False
    note: str | None = None


REASONS = ("poweroff", "halt", "reboot", "crash")


def configured(reason: str, on_poweroff: str, on_reboot: str, on_crash: str) -> str:
    """The on_* setting that applies to a guest stop of kind *reason*."""
    return {"poweroff": on_poweroff, "halt": on_poweroff, "reboot": on_reboot, "crash": on_crash}[reason]


def setting_name(reason: str) -> str:
    return "on_crash" if reason == "crash" else ("on_reboot" if reason == "reboot" else "on_poweroff")


def guest_stopped(reason: str, action: str, ran: float, minimum_restart: float,
                  enable_dump: bool = False) -> Action:
    """The guest powered off, halted, rebooted or crashed (QEMU still runs)
    after *ran* seconds; *action* is its on_* setting.  With xend-config's
    (enable-dump yes) a crash dumps the core first, as Xen did."""
    note = None
    if reason == "crash" and action.endswith("restart") and ran < minimum_restart:
        # Xen's guard against a guest that crashes as it boots, forever.
        note = (f"crashed after only {ran:.0f} s (< minimum-restart-time {minimum_restart:.0f} s); "
                "destroying instead of restarting")
        action = "destroy"
    dump = action.startswith("coredump-")
    if dump:
        action = action.split("-", 1)[1]
    dump = dump or (reason == "crash" and enable_dump)
    if action == "rename-restart":
        return Action("rename-restart", coredump=dump, note=note)
    if action.endswith("restart"):
        return Action("restart", coredump=dump, reset=reason != "reboot", note=note)
    if action == "preserve":
        return Action("preserve", coredump=dump, note=note)
    return Action("destroy", coredump=dump, note=note)


def preserved_state(reason: str) -> State:
    return State.CRASHED if reason == "crash" else State.SHUTDOWN


def qemu_died(on_crash: str, ran: float, minimum_restart: float) -> Action:
    """QEMU itself went away after *ran* seconds: a crash with nothing left
    to dump or rename; a restart boots a new QEMU."""
    restart = on_crash.endswith("restart")
    if restart and ran < minimum_restart:
        return Action("destroy", note=f"ran only {ran:.0f} s (< minimum-restart-time); not restarting")
    if restart:
        return Action("restart")
    if on_crash == "preserve":
        return Action("preserve")
    return Action("destroy")


def reboot_in_place(on_reboot: str) -> bool:
    """A guest reset (QEMU rebooted it already): True when on_reboot keeps
    it running, so only the start time changes."""
    return on_reboot.endswith("restart")


def guest_event(name: str, data: dict, halt_requested: bool) -> str | None:
    """The stop reason a guest SHUTDOWN/GUEST_PANICKED event means, None
    for one that is not the guest's own."""
    if name == "GUEST_PANICKED":
        return "crash"
    if name != "SHUTDOWN" or not data.get("guest"):
        return None
    reason = {"guest-shutdown": "poweroff", "guest-reset": "reboot",
              "guest-panic": "crash"}.get(data.get("reason"), "poweroff")
    if halt_requested and reason == "poweroff":
        reason = "halt"
    return reason
