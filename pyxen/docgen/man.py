"""The man pages: xm(1), xmdomain.cfg(5), xend-config.sxp(5), xentop(1),
xendomains(8) and pyxen(8), each made from the table or parser that is the
program's own source of truth, so a page cannot drift from the program."""

from __future__ import annotations

import contextlib
import io
import os
import textwrap

from ..config import options
from ..config import xendconfig
from ..ops import commands as xmtable
from .roff import Page, bold, esc

SEE_ALSO = {"xm": "xmdomain.cfg(5), xend\\-config.sxp(5), xentop(1), xendomains(8), pyxen(8)",
            "xmdomain.cfg": "xm(1), xend\\-config.sxp(5)",
            "xend-config.sxp": "xm(1), xmdomain.cfg(5), pyxen(8)",
            "xentop": "xm(1)", "xendomains": "xm(1), xmdomain.cfg(5)", "pyxen": "xend\\-config.sxp(5), xm(1)"}


def _flags(o: xmtable.Opt) -> str:
    parts = ([f"\\fB\\-{esc(o.short)}\\fR"] if o.short else []) + [f"\\fB\\-\\-{esc(o.long)}\\fR"]
    return ", ".join(parts) + (f" \\fI{esc(o.arg)}\\fR" if o.arg else "")


def xm() -> Page:
    p = Page("xm", 1, "Xen management user interface (pyxen)")
    p.section_("synopsis")
    p.raw(f"{bold('xm')} \\fIsubcommand\\fR [\\fIargs\\fR]")
    p.section_("description")
    p.para("xm is the client of xend: it creates, lists and controls guest domains, which pyxen runs as "
           "QEMU processes.  Each subcommand asks xend's HTTP API (on its Unix socket) and prints the answer "
           "in Xen's layout.  A Domain is its name or id.  Errors are one line on stderr (Error: ...) and "
           "exit status 1, or 3 for a domain that does not exist.")
    p.para("'xm help' lists the common subcommands, 'xm help --long' all of them, 'xm help SUBCOMMAND' "
           "(or 'xm SUBCOMMAND --help') one with its options.  A unique prefix of a subcommand's name "
           "runs it.")
    p.section_("subcommands")
    for c in sorted(xmtable.COMMANDS, key=lambda c: c.name):
        p.item(f"{bold('xm ' + c.name)} {esc(c.args)}", c.help)
        for o in c.opts:
            p.raw(".RS")
            p.item(_flags(o), o.help)
            p.raw(".RE")
    p.section_("deprecated names")
    p.para("These Xen spellings still work, with a warning on stderr:")
    for old, new in sorted(xmtable.DEPRECATED.items()):
        p.item(bold(old), f"xm {new}")
    p.section_("environment")
    p.item(bold("PYXEN_ROOT"), "The root under which etc/xen, var/lib/xen and xend's socket live (default /).")
    p.section_("files")
    p.item(bold("/etc/xen"), "Domain config files (xmdomain.cfg(5)); xm create looks here after the "
           "current directory.")
    p.item(bold("/etc/xen/xend-config.sxp"), "xend's options (xend-config.sxp(5)); xm info -c prints it.")
    return p


def _default(v) -> str:
    if isinstance(v, bool):
        return f" (default {'yes' if v else 'no'})"
    return "" if v in (None, "", []) else f" (default {v!r})"


def xmdomain_cfg() -> Page:
    p = Page("xmdomain.cfg", 5, "xm domain configuration files (pyxen)")
    p.section_("description")
    p.para("A domain config file sets the variables below as Python assignments (NAME = VALUE), evaluated "
           "by xm create on the client side; xend also accepts xl.cfg-style KEY=VALUE files and Xen's SXP "
           "(vm ...) form.  VAR=VALUE words on the xm create command line set variables too.  Variables "
           "marked 'no effect' are accepted and reported in xend's log, never silently dropped.")
    p.para("'xm create --help_config' prints the same list.")
    p.section_("variables")
    for v in options.VARS:
        kind = "LIST" if v.kind == "list" else "VALUE" if v.kind == "intorstr" else v.kind.upper()
        note = "" if v.applies else " [accepted; no effect on QEMU]"
        xl = " (xl.cfg)" if v.xl else ""
        p.item(f"{bold(v.name)} = \\fI{kind}\\fR", f"{v.help}{_default(v.default)}{xl}{note}")
    p.section_("example")
    p.verbatim("name = 'guest1'\nkernel = '/boot/vmlinuz'\nmemory = 256\nvcpus = 2\n"
               "disk = ['file:/var/lib/xen/images/guest1.img,xvda,w']\nvif = ['bridge=xenbr0']\n"
               "root = '/dev/xvda ro'")
    return p


def xend_config() -> Page:
    p = Page("xend-config.sxp", 5, "xend's configuration file (pyxen)")
    p.section_("description")
    p.para("xend reads its options from etc/xen/xend-config.sxp under its root, one SXP form per option: "
           "(NAME VALUE).  An unknown option or a bad value stops xend with a message naming the line.  "
           "'xend start' writes a commented default file on a fresh root.  Options marked pyxen are "
           "pyxen's own; those marked 'no effect' are Xen's, accepted for old files.")
    p.section_("options")
    for o in xendconfig.OPTIONS:
        kind = "|".join(o.choices) if o.choices else {"bool": "yes|no"}.get(o.kind, o.kind.upper())
        mark = {"pyxen": " [pyxen]", "inert": " [accepted; no effect]"}.get(o.origin, "")
        help_ = " ".join(o.help.split())
        p.item(f"({bold(o.name)} \\fI{esc(kind)}\\fR)", f"{help_}{_default(o.default)}{mark}")
    return p


def _help_of(main, argv: list[str]) -> str:
    """What *main* prints for --help, at a fixed width (argparse follows $COLUMNS)."""
    out, old = io.StringIO(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main(argv)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue()


def xentop() -> Page:
    from ..xm import top
    p = Page("xentop", 1, "live domain statistics (pyxen)")
    p.section_("synopsis")
    p.raw(f"{bold('xentop')} [\\fIoptions\\fR]   or   {bold('xm top')} [\\fIoptions\\fR]")
    p.section_("description")
    p.para("xentop shows the host and every domain's CPU, memory, network and block I/O, refreshed every "
           "few seconds; q quits.  In batch mode (-b) it prints plain text to stdout.")
    p.section_("options")
    p.verbatim(_help_of(top.main, ["--help"]))
    return p


def xendomains() -> Page:
    from .. import xendomains as xd
    from ..paths import Paths
    p = Page("xendomains", 8, "start and stop domains with the host (pyxen)")
    p.section_("synopsis")
    p.raw(f"{bold('xendomains')} {{start|stop|restart|reload|status}}")
    p.section_("description")
    p.verbatim(xd.__doc__.split("\n", 2)[2].strip().replace("``", ""))
    p.section_("settings")
    p.para("Defaults (for the root /), overridden by etc/sysconfig/xendomains or etc/default/xendomains "
           "and then by the environment:")
    for k, v in xd.defaults(Paths.from_env({})).items():
        p.item(bold(k), v or "(empty)")
    return p


def pyxen_admin() -> Page:
    from .. import cli
    p = Page("pyxen", 8, "pyxen host administration: the pool's CA and certificates")
    p.section_("synopsis")
    p.raw(f"{bold('pyxen ca')} [\\-\\-cn NAME] [\\-\\-force]")
    p.raw(".br")
    p.raw(f"{bold('pyxen cert')} NAME [\\-\\-ip ADDR]... [\\-\\-dns NAME]... [\\-\\-out DIR] [\\-\\-client]")
    p.section_("description")
    body = cli.__doc__.split("\n", 1)[1].strip("\n")
    p.verbatim("\n\n".join(textwrap.dedent(part) for part in body.split("\n\n")))
    for sub in ("ca", "cert"):
        p.section_(f"pyxen {sub}")
        p.verbatim(_help_of(cli.main, [sub, "--help"]))
    return p


def pages() -> list[Page]:
    return [xm(), xmdomain_cfg(), xend_config(), xentop(), xendomains(), pyxen_admin()]


def _see_also(p: Page) -> str:
    return p.text() + f".SH SEE ALSO\n{SEE_ALSO[p.name]}\n"


def render() -> dict[str, str]:
    """file name -> text, for every page."""
    return {p.filename: _see_also(p) for p in pages()}
