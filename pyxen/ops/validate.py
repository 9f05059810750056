"""Request validation for the operation table: the one place that checks and
types an operation's parameters.

xm runs it on what it is about to send (its words are strings) and xend on
what it received (JSON), so the two can never disagree about what is valid.
A bad value is one line naming the field (``OpError``); xend answers it
with HTTP 400, xm prints it as ``Error: ...``.

Coercion is as lenient as xend always was (``"5"`` is an integer, any
truthy value a true boolean): clients written against the old handlers
keep working.
"""

from __future__ import annotations

import math

from .table import Op, Param


class OpError(ValueError):
    """One line saying which field is wrong and why."""


def _present(v) -> bool:
    return v is not None


def _integer(p: Param, v):
    if v == "":
        return None
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        raise OpError(f"{p.name} must be an integer, got {v!r}") from None
    if p.range and not p.range[0] <= n <= p.range[1]:
        raise OpError(f"{p.name} must be {p.range[0]}-{p.range[1]}, got {v}")
    return n


def _number(p: Param, v):
    if v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        raise OpError(f"{p.name} must be a number, got {v!r}") from None
    if p.positive and not (x > 0 and math.isfinite(x)):
        raise OpError(f"{p.name} must be a positive number, got {v}")
    return x


def _string(p: Param, v):
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise OpError(f"{p.name} must be a string, got {v!r}")
    s = str(v)
    if p.choices and s not in p.choices:
        raise OpError(f"{p.name} must be one of {', '.join(p.choices)}, got {s!r}")
    return s


def vif_settings(config) -> dict:
    """A hot-plugged vif's settings (``{"bridge": "xenbr0", ...}``), checked by
    the same grammar as a config file's ``vif = [...]`` entry."""
    from ..config.errors import ConfigError
    from ..config.specs import VIF_KEYS, parse_vif
    if config in (None, ""):
        config = {}
    if not isinstance(config, dict):
        raise OpError("'config' must be an object of vif settings")
    for k, v in config.items():
        # A value with a comma would smuggle another key into the entry.
        if k not in VIF_KEYS or not isinstance(v, str) or not v or "," in v:
            raise OpError(f"Invalid argument: {k}={v}")
    try:
        return parse_vif(",".join(f"{k}={v}" for k, v in config.items()))
    except ConfigError as e:
        raise OpError(str(e)) from None


def _value(p: Param, v):
    if p.type == "integer":
        return _integer(p, v)
    if p.type == "number":
        return _number(p, v)
    if p.type == "boolean":
        if p.where == "query":
            return v in ("1", "true", True)
        return bool(v)
    if p.type == "string":
        return _string(p, v)
    if p.type == "vif":
        return vif_settings(v)
    return v        # array / object: the handler takes what it understands


def validate(op: Op, body: dict | None = None, query: dict | None = None) -> dict:
    """Every parameter of *op*, typed: given values checked, absent ones their default."""
    out = {}
    for p in op.params:
        src = (query if p.where == "query" else body) or {}
        v = src.get(p.name)
        if v is None or (v == "" and p.required):
            if p.required:
                raise OpError(f"'{p.name}' ({p.help}) is required")
            out[p.name] = _value(p, v) if p.type == "vif" else p.default
            continue
        v = _value(p, v)
        out[p.name] = p.default if v is None else v
    return out


def body_of(op: Op, values: dict) -> dict:
    """What xm sends: the body parameters that were given (absent ones are
    left to xend's defaults)."""
    return {p.name: values[p.name] for p in op.body_params if values.get(p.name) is not None}
