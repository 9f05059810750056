"""xm's subcommands, generated from the command table (``pyxen.ops.commands``).

``COMMANDS`` maps each name to its table entry; running one either calls
the function the entry names (resolved then, so xm imports only what that
command needs) or, for a command that only passes its words on, the
generic runner here: words and flags become the operation's parameters,
checked by the same validator xend runs (``pyxen.ops.validate``), then sent.
``xm help``, ``xm help --long`` and ``xm <cmd> --help`` come from the same
table.
"""

from __future__ import annotations

import importlib
import os
import sys
from urllib.parse import quote, urlencode

from ..ops import commands as table
from ..ops import validate as opcheck
from ..ops.table import op as get_op
from ..paths import Paths
from .args import parse_mem
from .client import Client, XmError

DEPRECATED = table.DEPRECATED
MANUAL_SPELLINGS = table.MANUAL_SPELLINGS


class XmCommand:
    """A table entry, runnable: its attributes are the entry's."""

    def __init__(self, spec: table.Command):
        self.spec = spec
        self.min_args, self.max_args = spec.arg_range

    def __getattr__(self, name):
        return getattr(self.spec, name)

    def run(self, ctx, opts, args):
        if self.spec.run:
            module, _, attr = self.spec.run.partition(":")
            return getattr(importlib.import_module(module), attr)(ctx, opts, args)
        return pass_on(ctx, self.spec, opts, args)


COMMANDS: dict[str, XmCommand] = {c.name: XmCommand(c) for c in table.COMMANDS}


def _kv(words: list[str], cmd: str) -> dict:
    out = {}
    for w in words:
        k, sep, v = w.partition("=")
        if not sep or not v:
            raise XmError(f"Invalid argument: {w}\n\n{usage(cmd)}".rstrip())
        out[k] = v
    return out


def pass_on(ctx, spec: table.Command, opts: dict, args: list[str]) -> int:
    """A command that only hands its words to its operation."""
    values: dict = dict(spec.fixed)
    rest = list(args)
    for name, conv, _opt in spec.words:
        if conv.endswith("*"):
            values[name] = _kv(rest, spec.name) if conv == "kv*" else rest
            rest = []
            break
        if not rest:
            break
        word = rest.pop(0)
        values[name] = (os.path.abspath(word) if conv == "path" else parse_mem(word) if conv == "mem"
                        else word)
    for o in spec.opts:
        if o.param and o.long in opts:
            values[o.param] = opts[o.long] if o.arg else True
    ctx.call(spec.op, values)
    return 0


class Context:
    """One xm command's run: its name, the host's paths, and the API client
    (made only when the command first talks to xend)."""

    def __init__(self, name: str, paths: Paths, long_help: bool = False, _client: Client | None = None):
        self.name = name
        self.paths = paths
        self.long_help = long_help
        self._client = _client

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.paths)
        return self._client

    def call(self, op_name: str, values: dict):
        """Check *values* as xend will (one line naming the field if wrong), then send."""
        op = get_op(op_name)
        path_vals = {p: values[p] for p in op.path_params}
        try:
            checked = opcheck.validate(op, values, values)
        except opcheck.OpError as e:
            raise XmError(str(e)) from None
        path = op.path.format(**{k: quote(str(v), safe="") for k, v in path_vals.items()})
        query = {p.name: "1" for p in op.query_params if checked.get(p.name)}
        if query:
            path += "?" + urlencode(query)
        if op.method == "GET":
            return self.client.get(path)
        if op.method == "DELETE":
            return self.client.delete(path)
        return self.client.post(path, opcheck.body_of(op, checked))


# ------------------------------------------------------------------- help
MAN_POINTERS = ["", "<Domain> can either be the Domain Name or Id.",
                "For more help on 'xm' see the xm(1) man page.",
                "For more help on 'xm create' see the xmdomain.cfg(5)  man page.", ""]


def cmd_help(ctx, opts, args):
    if args:
        name = resolve(args[0])
        if name is None:
            raise XmError(f"Subcommand {args[0]} not found!")
        sys.stdout.write(usage(name, full=True))
        return 0
    sys.stdout.write(long_help() if "long" in opts or ctx.long_help else short_help())
    return 0


def usage(name: str, full: bool = False) -> str:
    c = COMMANDS[name]
    out = f"Usage: xm {c.name} {c.args}\n\n{c.help}\n"
    if full and c.opts:
        out += "\n"
        for o in c.opts:
            flags = ", ".join(x for x in ((f"-{o.short}" if o.short else None),
                                           f"--{o.long}" + (f"={o.arg}" if o.arg else "")) if x)
            out += f"  {flags:<28} {o.help}\n"
    return out


def short_help() -> str:
    lines = ["Usage: xm <subcommand> [args]", "", "Control, list, and manipulate Xen guest instances.", "",
             "Common 'xm' commands:", ""]
    lines += [f"  {c.name:<14} {c.help}" for c in COMMANDS.values() if c.common]
    return "\n".join(lines + MAN_POINTERS)


def long_help() -> str:
    lines = ["Usage: xm <subcommand> [args]", "", "Control, list, and manipulate Xen guest instances.", "",
             "xm full list of subcommands:", ""]
    lines += [f"  {c.name:<22} {c.help}" for c in sorted(COMMANDS.values(), key=lambda c: c.name)]
    return "\n".join(lines + MAN_POINTERS)


def resolve(word: str) -> str | None:
    if word in COMMANDS:
        return word
    if word in MANUAL_SPELLINGS:
        return MANUAL_SPELLINGS[word]
    if word in DEPRECATED and DEPRECATED[word] in COMMANDS:
        print(f"Command {word} is deprecated.  Please use xm {DEPRECATED[word]} instead.", file=sys.stderr)
        return DEPRECATED[word]
    matches = [n for n in COMMANDS if n.startswith(word)]
    return matches[0] if len(matches) == 1 else None


def dom_path(ref: str) -> str:
    """A domain reference as one path segment."""
    return quote(ref, safe="")
