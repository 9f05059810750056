"""The one rule for domain names, applied wherever a name enters pyxen.

Xen 3's xend allowed letters, digits and ``_-.:+`` (plus ``/``, which
pyxen cannot allow: names become file names) and refused names made only
of digits, which ``xm`` would read as a domain id.  Every entry point --
config files (``xm create``), the API, uploads, ``xm rename``, incoming
migrations and restored save files -- builds a ``DomainConfig`` or renames
through ``check``, so nothing else can reach a QEMU command line, a log
line or an ``xm list`` row: no commas (QEMU option syntax), no spaces,
tabs, newlines or escape sequences (split rows, forged log lines, a
repainted terminal), no NUL.
"""

from __future__ import annotations

import re

from .errors import ConfigError

__all__ = ["MAX_LENGTH", "check", "is_valid"]

# Long enough for the rename-restart name "Domain-<uuid>" (43); short
# enough that a name cannot flood an xm list row or a log line.
MAX_LENGTH = 64
_ALLOWED = re.compile(r"[A-Za-z0-9_.:+-]+")


def _problem(name) -> str | None:
    if not isinstance(name, str):
        return "it must be a string"
    if not name:
        return "it is empty"
    if len(name) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    if name.isdigit():
        return "digits only would be read as a domain id"
    if not _ALLOWED.fullmatch(name):
        bad = next(c for c in name if not _ALLOWED.fullmatch(c))
        return (f"character {bad!r} is not allowed "
                "(letters, digits and _ - . : + only)")
    if name in (".", ".."):
        return "it is a directory name"
    return None


def is_valid(name) -> bool:
    return _problem(name) is None


def check(name) -> str:
    """*name* if it is a valid domain name, else ConfigError saying why.

    The message shows the name through ``repr`` (ASCII escapes), so a name
    made to repaint a terminal or forge a log line is shown, not obeyed.
    """
    why = _problem(name)
    if why is not None:
        shown = ascii(name) if isinstance(name, str) else type(name).__name__
        if len(shown) > MAX_LENGTH + 2:
            shown = shown[:MAX_LENGTH] + "...'"
        raise ConfigError(f"name: invalid domain name {shown}: {why}")
    return name
