"""Which requests a guest can receive at all, decided before xend sends one.

A shutdown request is a press of the ACPI power button: an HVM guest
configured without ACPI (``acpi = 0``, the manual's A.2 option) has no
button, so the request would wait for an answer that cannot come.  Such a
request is refused at once with the way out (``xm destroy``) instead.
"""

from __future__ import annotations


def shutdown_refusal(cfg, reason: str) -> str | None:
    """Why *cfg*'s guest cannot act on a *reason* shutdown request, or None."""
    if reason == "reboot":
        return None     # Ctrl-Alt-Del is a key press: no ACPI needed
    if cfg.builder == "hvm" and not int(cfg.hvm.get("acpi", 1) or 0):
        return (f"Domain {cfg.name} has no ACPI (acpi = 0): it cannot receive a shutdown request "
                f"(no power button). Shut it down from inside, or stop it with 'xm destroy {cfg.name}'")
    return None
