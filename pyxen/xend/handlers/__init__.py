"""xend's API handlers, one module per concern, each function named in the
operation table (``pyxen.ops.table``) and resolved when xend starts.

A handler takes one ``Call``: the request, the operation's validated
parameters, the domain it acts on (for the table's domain operations) and
the ``Api`` it serves.  It returns a dict (sent as JSON with the table's
status) or a finished aiohttp response (streams, websockets, redirects).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ...ops.table import Op


@dataclass
class Call:
    api: Any            # pyxen.xend.api.Api
    request: Any        # aiohttp.web.Request
    op: Op
    args: dict          # the operation's parameters, validated and typed
    dom: Any = None     # the Domain, for the table's domain operations

    def match(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def domains(self):
        return self.api.domains


def resolve(name: str) -> Callable:
    """'pyxen.xend.handlers.host:get_host' -> the function."""
    module, sep, attr = name.partition(":")
    if not sep:
        raise LookupError(f"handler {name!r} is not module:function")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise LookupError(f"handler {name!r} does not exist")
    return fn
