"""Reading xm's numeric words: sizes and numbers, or one line naming the argument."""

from __future__ import annotations

from .client import XmError


def parse_mem(text: str) -> int:
    """Xen's size argument: MiB, or with a k/m/g suffix."""
    t = text.strip()
    mult = {"k": 1 / 1024, "m": 1, "g": 1024}
    unit = 1
    if t and t[-1].lower() in mult:
        unit, t = mult[t[-1].lower()], t[:-1]
    try:
        value = int(t)
    except ValueError:
        raise XmError(f"Invalid memory size: {text!r}") from None
    if value < 0:
        raise XmError(f"Invalid memory size: {text!r}")
    return int(value * unit)


def number(value: str, what: str, kind=float):
    """A numeric argument, or the one-line error naming it."""
    try:
        return kind(value)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise XmError(f"{what} must be {noun}, got {value!r}") from None


def int_arg(value: str, what: str) -> int:
    return number(value, what, int)


def num_arg(value: str, what: str) -> float:
    return number(value, what, float)
