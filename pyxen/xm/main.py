"""``xm``: the command-line client of xend.

Thin by design: parse words, ask xend, format the answer in Xen's layout.
Errors are one line on stderr (``Error: ...``), exit 1, or exit 3 for a
domain that does not exist; never a traceback.
"""

from __future__ import annotations

import sys

from ..paths import Paths
from .client import XmError
from .commands import COMMANDS, DEPRECATED, MANUAL_SPELLINGS, Context, resolve, short_help, usage


def parse_opts(cmd, argv: list[str]) -> tuple[dict, list[str]]:
    if not any(a.startswith("-") and a != "-" for a in argv):
        # No option words: what gnu_getopt would return.  Skipping it keeps
        # getopt (and the gettext it imports) off the common path.
        return {}, list(argv)
    import getopt
    shorts = "".join(o.short + (":" if o.arg else "") for o in cmd.opts if o.short)
    longs = [o.long + ("=" if o.arg else "") for o in cmd.opts]
    by_flag = {}
    for o in cmd.opts:
        if o.short:
            by_flag["-" + o.short] = o.long
        by_flag["--" + o.long] = o.long
    try:
        # Options may come before or after the arguments (xm create's config
        # and var=value words included).
        pairs, rest = getopt.gnu_getopt(argv, shorts, longs)
    except getopt.GetoptError as e:
        raise XmError(f"{e.msg}\n\n{usage(cmd.name)}".rstrip()) from None
    opts = {}
    for flag, val in pairs:
        opts[by_flag[flag]] = val
    return opts, rest


def nearest(word: str) -> str:
    """' Did you mean ...?' for a mistyped command, or ''."""
    import difflib     # here, not at the top: only a mistyped command pays for it
    near = difflib.get_close_matches(word, list(COMMANDS) + list(DEPRECATED) + list(MANUAL_SPELLINGS),
                                     n=1, cutoff=0.6)
    return f"  Did you mean 'xm {near[0]}'?" if near else ""


def run(argv: list[str]) -> int:
    if not argv:
        sys.stdout.write(short_help())
        return 1
    first = argv[0]
    if first in ("-h", "--help"):
        first, argv = "help", ["help", "--long"]
    name = resolve(first)
    if name is None:
        raise XmError(f"Subcommand {first} not found!{nearest(first)}\n\n{short_help()}".rstrip())
    cmd = COMMANDS[name]
    ctx = Context(name=name, paths=Paths.from_env())
    opts, args = parse_opts(cmd, argv[1:])
    if "help" in opts and name != "help":
        sys.stdout.write(usage(name, full=True))
        return 0
    if len(args) < cmd.min_args or (cmd.max_args is not None and len(args) > cmd.max_args):
        if cmd.min_args == cmd.max_args:
            need = f"{cmd.min_args} argument{'s' if cmd.min_args != 1 else ''}"
        elif len(args) < cmd.min_args:
            need = f"at least {cmd.min_args} argument{'s' if cmd.min_args != 1 else ''}"
        else:
            need = f"at most {cmd.max_args} argument{'s' if cmd.max_args != 1 else ''}"
        raise XmError(f"'xm {name}' requires {need}.\n\n{usage(name)}".rstrip())
    return cmd.run(ctx, opts, args) or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except XmError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
