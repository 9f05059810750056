"""QEMU's own words for a failure, from the domain's qemu-dm log.

When QEMU refuses a saved or migrated state ("Unknown savevm section ...")
or cannot start, the reason is a line QEMU writes to its log
(``qemu-dm-<name>.log``); xend's message quotes that line, so the user
does not have to go and find it.  The log is appended to by every QEMU the
domain had, so callers mark where this QEMU's part starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# error_report() lines: "qemu-system-x86_64: <message>", possibly with the
# -msg timestamp prefix; -d guest_errors lines are the guest's, never ours.
_ERROR = re.compile(r"^(?:\S+ )?qemu-system-[\w-]+: (?P<msg>.+)$")
_TAIL = 64 * 1024
# Lines that only say that something failed: the line before says what.
_GENERIC = ("load of migration failed", "error while loading state", "warning:")


def mark(log: Path) -> int:
    """Where the log ends now (0 if there is none yet)."""
    try:
        return os.stat(log).st_size
    except OSError:
        return 0


def last_error(log: Path, since: int = 0) -> str | None:
    """The last error line QEMU wrote after offset *since*, without its
    prefix: the last that says what went wrong, when a generic one
    ("load of migration failed: Invalid argument") follows it."""
    try:
        with open(log, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(since, size - _TAIL))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    found = [m.group("msg").strip() for m in map(_ERROR.match, map(str.strip, text.splitlines())) if m]
    specific = [x for x in found if not x.startswith(_GENERIC)]
    return (specific or found or [None])[-1]


def reason(log: Path, since: int = 0) -> str:
    """': QEMU says: <line>' for appending to a failure message, or ''."""
    msg = last_error(log, since)
    return f"; QEMU says: {msg}" if msg else ""
