"""Which requests a guest can receive at all, decided before xend sends one.

A balloon target below what a guest needs to keep running (its kernel and,
for the default image, its whole root filesystem live in RAM) is refused
with the floor named: ``xm mem-set dom 18`` used to take the guest's
console and the guest with it.  (The balloon's deflate-on-oom would hide
ballooned memory from the guest's MemTotal, which xm-test and scripts
read, so the floor is the guard.)

A shutdown request is a press of the ACPI power button: an HVM guest
configured without ACPI (``acpi = 0``, the manual's A.2 option) has no
button, so the request would wait for an answer that cannot come.  Such a
request is refused at once with the way out (``xm destroy``) instead.
"""

from __future__ import annotations


# MiB: the default image's guest stays alive and usable at this size (measured
# under TCG: at 48 MiB its init is OOM-killed and the console goes with it; at
# 64 MiB the balloon already runs out of pages to take).
MEM_FLOOR = 80


def mem_set_refusal(name: str, mib: int) -> str | None:
    """Why a balloon target of *mib* MiB is refused for domain *name*, or None."""
    if mib < MEM_FLOOR:
        return (f"memory for domain {name}: {mib} MiB is below the {MEM_FLOOR} MiB floor a guest needs "
                "to keep running (its kernel and root filesystem are in RAM)")
    return None


def shutdown_refusal(cfg, reason: str) -> str | None:
    """Why *cfg*'s guest cannot act on a *reason* shutdown request, or None."""
    if reason == "reboot":
        return None     # Ctrl-Alt-Del is a key press: no ACPI needed
    if cfg.builder == "hvm" and not int(cfg.hvm.get("acpi", 1) or 0):
        return (f"Domain {cfg.name} has no ACPI (acpi = 0): it cannot receive a shutdown request "
                f"(no power button). Shut it down from inside, or stop it with 'xm destroy {cfg.name}'")
    return None


def crash_action(action: str, reason: str, enable_dump: bool) -> str:
    """The on_crash action with xend-config's (enable-dump yes) applied: as
    in Xen, a crashed domain's core is dumped (into the dump directory)
    before its on_crash action, as a coredump-<action> would."""
    if reason == "crash" and enable_dump and not action.startswith("coredump-"):
        return f"coredump-{action}"
    return action
