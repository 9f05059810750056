"""QEMU's option syntax (``driver,key=value,key=value``), written safely.

In that syntax a ``,`` ends a value unless it is doubled, so a value that
comes from a user (a domain name, a file name, a listen address, a MAC)
and holds a comma would add options of its own choosing:
``-name 'a,process=evil'`` renames the QEMU process.  Every value the argv
builder puts into an option string goes through ``value``; values passed
as a whole argument (``-kernel FILE``, ``-append``) or as JSON
(``-blockdev {...}``) need no escaping and do not.
"""

from __future__ import annotations

__all__ = ["value", "props", "kv"]


def value(v) -> str:
    """*v* as one value of a QEMU option string: every ``,`` doubled."""
    return str(v).replace(",", ",,")


def props(items: dict) -> str:
    """``key=value,...`` with every value escaped (keys are ours, not users')."""
    return ",".join(f"{k}={value(v)}" for k, v in items.items())


def kv(items: dict, first: str) -> str:
    """``FIRST,key=value,...``: the *first* key's value leads, bare (a driver
    or backend type), the rest follow as ``props``."""
    rest = props({k: v for k, v in items.items() if k != first})
    return f"{value(items[first])},{rest}" if rest else value(items[first])
