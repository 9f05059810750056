"""The xm command table: one entry per subcommand, the single source of
its synopsis, help text and options.  ``xm help``, ``xm <cmd> --help``,
option parsing and the dispatcher are all generated from it."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from ..config import sxp
from ..config.errors import ConfigError
from ..paths import Paths
from . import format as fmt
from .client import Client, XmError


@dataclass(frozen=True)
class Opt:
    short: str | None      # 'l' (no dash)
    long: str              # 'long'
    help: str
    arg: str | None = None  # metavar when it takes a value


@dataclass
class Command:
    name: str
    args: str
    help: str
    run: object
    opts: tuple[Opt, ...] = ()
    common: bool = False          # listed in the short `xm help`
    min_args: int = 0
    max_args: int | None = None
    aliases: tuple[str, ...] = ()


COMMANDS: dict[str, Command] = {}
# Xen's deprecated spellings: run the new command after a warning on stderr.
DEPRECATED: dict[str, str] = {
    "balloon": "mem-set", "set-vcpus": "vcpu-set", "vif-list": "network-list",
    "vbd-create": "block-attach", "vbd-destroy": "block-detach", "vbd-list": "block-list",
}
# Spellings the Xen 3.0 manual itself uses for a command: accepted as they are.
MANUAL_SPELLINGS: dict[str, str] = {"vcpus-set": "vcpu-set"}


def command(name, args, help, opts=(), common=False, min_args=0, max_args=None):
    def deco(fn):
        COMMANDS[name] = Command(name, args, help, fn, tuple(opts), common, min_args, max_args)
        return fn
    return deco


def _dom(ref: str) -> str:
    return quote(ref, safe="")


# ------------------------------------------------------------------ create
CREATE_OPTS = (
    Opt("h", "help", "Print this help."),
    Opt(None, "help_config", "Print the available configuration variables for the config file."),
    Opt("q", "quiet", "Quiet."),
    Opt(None, "path", "Search path for configuration scripts (default .:<root>/etc/xen).", "PATH"),
    Opt("f", "defconfig", "Use the given Python configuration script.", "FILE"),
    Opt("F", "config", "Domain configuration to use (SXP).", "FILE"),
    Opt("n", "dryrun", "Dry run - prints the resulting configuration in SXP but does not create the domain."),
    Opt("p", "paused", "Leave the domain paused after it is created."),
    Opt("c", "console_autoconnect", "Connect to the console after the domain is created."),
)


@command("create", "<ConfigFile> [options] [vars]", "Create a domain based on <ConfigFile>.",
         CREATE_OPTS, common=True)
def cmd_create(ctx, opts, args):
    # Imported here: the config evaluator is the heaviest part of xm and
    # only create needs it (keeps every other command quick to start).
    from ..config import xmconfig
    from ..config.options import help_text as config_help
    if "help_config" in opts:
        sys.stdout.write(config_help())
        return 0
    quiet = "quiet" in opts
    paths = ctx.paths
    search = (opts.get("path") or f".:{paths.etc}").split(":")
    if "config" in opts:
        fn = opts["config"]
        try:
            with open(fn) as f:
                text = f.read()
            value = sxp.from_string(text)
        except OSError as e:
            raise XmError(f"Unable to open config file: {fn}: {e.strerror}") from None
        except sxp.SxpError as e:
            raise XmError(str(e.with_file(fn))) from None
        from ..config.domain import DomainConfig
        try:
            cfg = DomainConfig.from_sxp(value)
        except ConfigError as e:
            raise XmError(f"{fn}: {e}") from None
        path = fn
    else:
        try:
            cfg, path = xmconfig.load(args, opts.get("defconfig"), search)
        except ConfigError as e:
            raise XmError(str(e)) from None
    if not quiet and path is not None:
        print(f'Using config file "{path}".')
    if "dryrun" in opts:
        sys.stdout.write(sxp.pretty(cfg.to_sxp()))
        return 0
    res = ctx.client.post("/api/domains", {"config": sxp.to_string(cfg.to_sxp()),
                                           "paused": "paused" in opts, "notes": cfg.notes})
    if not quiet:
        print(f"Started domain {res['name']} (id={res['domid']})")
    if cfg.builder == "hvm" and (cfg.hvm.get("vncviewer") or cfg.hvm.get("vncconsole")):
        _start_vncviewer(ctx, res["name"])
    if "console_autoconnect" in opts:
        from .console import attach
        attach(ctx.client, res["name"])
    return 0


# -------------------------------------------------------------------- list
@command("list", "[options] [Domain, ...]", "List information about all/some domains.",
         (Opt("l", "long", "Output all domain details in SXP."),), common=True)
def cmd_list(ctx, opts, args):
    long = "long" in opts
    if args:
        doms = [ctx.client.get(f"/api/domains/{_dom(a)}?long={int(long)}") for a in args]
    else:
        doms = ctx.client.get(f"/api/domains?long={int(long)}")["domains"]
    sys.stdout.write(fmt.list_long(doms) if long else fmt.list_table(doms))
    return 0


# ----------------------------------------------------------------- console
@command("console", "[-q|--quiet] <Domain>", "Attach to <Domain>'s console (Ctrl-] detaches).",
         (Opt("q", "quiet", "Do not print an error when the domain does not exist."),),
         common=True, min_args=1, max_args=1)
def cmd_console(ctx, opts, args):
    from .console import attach
    try:
        attach(ctx.client, args[0])
    except XmError as e:
        if "quiet" in opts and e.code == 3:
            return 1
        raise
    return 0


# ------------------------------------------------------ shutdown and friends
def _wait_opts(extra=()):
    return (Opt("w", "wait", "Wait for the domain to shut down."),
            Opt("a", "all", "Shut down all domains.")) + tuple(extra)


# How long `xm shutdown -w` waits for a guest to act on the request (well
# under the client's 600 s socket timeout, so the answer is xend's message).
SHUTDOWN_WAIT = 300


def _shutdown(ctx, opts, args, reason):
    if "all" in opts:
        if args:
            raise XmError("-a takes no domain")
        targets = [d["name"] for d in ctx.client.get("/api/domains")["domains"] if d["domid"] != 0]
    else:
        if len(args) != 1:
            raise XmError(f"'xm {ctx.name}' requires 1 argument.\n\n{usage(ctx.name)}".rstrip())
        targets = args
    failed = []
    for t in targets:
        try:
            ctx.client.post(f"/api/domains/{_dom(t)}/shutdown", {"reason": reason, "wait": False})
        except XmError as e:
            if "all" not in opts:
                raise
            # -a: one guest that cannot be asked (acpi = 0) does not spare the others.
            print(f"Error: {e}", file=sys.stderr)
            failed.append(t)
    targets = [t for t in targets if t not in failed]
    if "wait" in opts and reason != "reboot":
        for t in targets:
            # Asking again with wait=true returns once the domain is gone;
            # the second request is idempotent for a domain already going down.
            # xend gives up after SHUTDOWN_WAIT seconds and says so.
            try:
                ctx.client.post(f"/api/domains/{_dom(t)}/shutdown",
                                {"reason": reason, "wait": True, "timeout": SHUTDOWN_WAIT})
            except XmError as e:
                if e.code != 3 and "is not running" not in str(e):
                    raise
            print(f"Domain {t} terminated")
        if "all" in opts and not failed:
            print("All domains terminated")
    return 1 if failed else 0


@command("shutdown", "<Domain> [-waRH]", "Shut down a domain.",
         _wait_opts((Opt("H", "halt", "Shut down and halt the domain."),
                     Opt("R", "reboot", "Shut down and reboot the domain."))), common=True, max_args=1)
def cmd_shutdown(ctx, opts, args):
    reason = "reboot" if "reboot" in opts else "halt" if "halt" in opts else "poweroff"
    return _shutdown(ctx, opts, args, reason)


@command("reboot", "<Domain> [-wa]", "Reboot a domain.", _wait_opts(), common=True, max_args=1)
def cmd_reboot(ctx, opts, args):
    return _shutdown(ctx, opts, args, "reboot")


def _simple(op, help_text, common=True):
    def fn(ctx, opts, args):
        ctx.client.post(f"/api/domains/{_dom(args[0])}/{op}")
        return 0
    command(op, "<Domain>", help_text, common=common, min_args=1, max_args=1)(fn)


_simple("destroy", "Terminate a domain immediately.")
_simple("pause", "Pause execution of a domain.")
_simple("unpause", "Unpause a paused domain.")


# ------------------------------------------------------- save / restore
# xend runs with cwd /, so xm sends absolute paths.
@command("save", "[-c|--checkpoint] <Domain> <File>",
         "Save a domain state to restore later.",
         (Opt("c", "checkpoint", "Leave the domain running after saving it."),),
         common=True, min_args=2, max_args=2)
def cmd_save(ctx, opts, args):
    dom, path = args
    ctx.client.post(f"/api/domains/{_dom(dom)}/save",
                    {"file": os.path.abspath(path), "checkpoint": "checkpoint" in opts})
    return 0


@command("restore", "<File> [-p|--paused]", "Restore a domain from a saved state.",
         (Opt("p", "paused", "Do not unpause the domain after restoring it."),),
         common=True, min_args=1, max_args=1)
def cmd_restore(ctx, opts, args):
    ctx.client.post("/api/domains/restore", {"file": os.path.abspath(args[0]),
                                             "paused": "paused" in opts})
    return 0


@command("migrate", "<Domain> <Host> [-l|--live] [-p|--port N] [-r|--resource MB/s] [--downtime MS]",
         "Migrate a domain to another machine (its xend must run the relocation server).",
         (Opt("l", "live", "Use live migration: copy memory while the guest runs, then a short stop."),
          Opt("p", "port", "Use the given relocation port (default xend-relocation-port, 8002).", "N"),
          Opt("r", "resource", "Limit the bandwidth the migration uses, in MiB/s.", "MB/s"),
          Opt(None, "downtime", "The longest pause allowed at the switch-over, in ms (default: start at "
              "50 ms and allow more while pre-copy does not converge).", "MS"),
          Opt(None, "progress", "Print progress even when stderr is not a terminal.")),
         common=True, min_args=2, max_args=2)
def cmd_migrate(ctx, opts, args):
    dom, host = args
    body = {"host": host, "live": "live" in opts}
    if "port" in opts:
        body["port"] = _int_arg(opts["port"], "port")
        if not 0 < body["port"] < 65536:
            raise XmError(f"port must be 1-65535, got {opts['port']}")
    if "resource" in opts:
        body["resource"] = _num_arg(opts["resource"], "resource")
        if body["resource"] <= 0:
            raise XmError(f"resource must be a positive number of MiB/s, got {opts['resource']}")
    if "downtime" in opts:
        body["downtime"] = _int_arg(opts["downtime"], "downtime")
        if not 1 <= body["downtime"] <= 60000:
            raise XmError(f"downtime must be 1-60000 ms, got {opts['downtime']}")
    show = "progress" in opts or sys.stderr.isatty()
    if show:
        from .progress import MigrationProgress
        with MigrationProgress(ctx.client, dom, sys.stderr) as prog:
            res = ctx.client.post(f"/api/domains/{_dom(dom)}/migrate", body)
            prog.done(res)
    else:
        ctx.client.post(f"/api/domains/{_dom(dom)}/migrate", body)
    return 0


@command("domid", "<DomainName>", "Convert a domain name to domain id.", min_args=1, max_args=1)
def cmd_domid(ctx, opts, args):
    print(ctx.client.get(f"/api/domains/{_dom(args[0])}")["domid"])
    return 0


@command("domname", "<DomId>", "Convert a domain id to domain name.", min_args=1, max_args=1)
def cmd_domname(ctx, opts, args):
    print(ctx.client.get(f"/api/domains/{_dom(args[0])}")["name"])
    return 0


@command("uptime", "[-s] [Domain, ...]", "Print uptime for a domain.",
         (Opt("s", "short", "Print one line per domain, like uptime(1)."),))
def cmd_uptime(ctx, opts, args):
    if args:
        doms = [ctx.client.get(f"/api/domains/{_dom(a)}") for a in args]
    else:
        doms = ctx.client.get("/api/domains")["domains"]
    if "short" in opts:
        now = time.localtime()
        for d in doms:
            print(fmt.uptime_short(d, now))
    else:
        print(fmt.UPTIME_HEADER)
        for d in doms:
            print(fmt.uptime_row(d))
    return 0


@command("info", "[-c|--config]", "Get information about Xen host.",
         (Opt("c", "config", "List xend configuration parameters."),), common=True, max_args=0)
def cmd_info(ctx, opts, args):
    if "config" in opts:
        sys.stdout.write(ctx.paths.xend_config.read_text() if ctx.paths.xend_config.exists() else "")
        return 0
    sys.stdout.write(fmt.info(ctx.client.get("/api/host")["info"]))
    return 0


@command("dmesg", "[-c|--clear]", "Read and/or clear Xend's message buffer.",
         (Opt("c", "clear", "Clear the contents of the message buffer."),), max_args=0)
def cmd_dmesg(ctx, opts, args):
    if "clear" in opts:
        ctx.client.post("/api/dmesg/clear")
        return 0
    lines = ctx.client.get("/api/dmesg")["lines"]
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


@command("top", "[-b] [-d SECONDS] [-i N]", "Monitor a host and the domains in real time (xentop).",
         (Opt("b", "batch", "Batch mode: print plain text to stdout."),
          Opt("d", "delay", "Seconds between updates.", "SECONDS"),
          Opt("i", "iterations", "Number of updates before exiting.", "N")), max_args=0)
def cmd_top(ctx, opts, args):
    from .top import main as top_main
    argv = []
    if "batch" in opts:
        argv.append("-b")
    if "delay" in opts:
        argv += ["-d", opts["delay"]]
    if "iterations" in opts:
        argv += ["-i", opts["iterations"]]
    return top_main(argv, ctx.client)


@command("events", "[--json] [-n N]", "Follow domain state changes as they happen.",
         (Opt(None, "json", "One JSON object per line."),
          Opt("n", "count", "Exit after N events.", "N")), max_args=0)
def cmd_events(ctx, opts, args):
    import json as _json
    limit = _int_arg(opts["count"], "count") if "count" in opts else None
    if limit is not None and limit <= 0:
        return 0
    seen = 0
    # The note on stderr tells a watching script (or person) that from here on
    # nothing is missed.
    ready = lambda: print("# following xend events (Ctrl-C stops)", file=sys.stderr, flush=True)  # noqa: E731
    for event, data in ctx.client.stream("/api/events", on_open=ready):
        if "json" in opts:
            print(_json.dumps(data), flush=True)
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(data["time"]))
            print(f"{stamp} {event:<9} {data['name']} (id={data['domid']}) {data['state']}", flush=True)
        seen += 1
        if limit is not None and seen >= limit:
            break
    return 0


@command("log", "", "Print xend log.", max_args=0)
def cmd_log(ctx, opts, args):
    sys.stdout.write(ctx.client.get("/api/log")["log"])
    return 0


# ---------------------------------------------------------------- vcpus
@command("vcpu-list", "[Domain, ...]", "List the VCPUs for all/some domains.")
def cmd_vcpu_list(ctx, opts, args):
    if args:
        targets = args
    else:
        targets = [str(d["domid"]) for d in sorted(ctx.client.get("/api/domains")["domains"],
                                                   key=lambda d: d["domid"])]
    lines = [fmt.VCPU_HEADER]
    for t in targets:
        info = ctx.client.get(f"/api/domains/{_dom(t)}/vcpus")
        lines += [fmt.vcpu_row(info["name"], info["domid"], v) for v in info["vcpus"]]
    print("\n".join(lines))
    return 0


@command("vcpu-pin", "<Domain> <VCPU|all> <CPUs|all>", "Set which CPUs a VCPU can use.",
         min_args=3, max_args=3)
def cmd_vcpu_pin(ctx, opts, args):
    dom, vcpu, cpus = args
    ctx.client.post(f"/api/domains/{_dom(dom)}/vcpu-pin", {"vcpu": vcpu, "cpus": cpus})
    return 0


def _int_arg(value: str, what: str) -> int:
    return _number(value, what, int)


def _number(value: str, what: str, kind=float):
    """A numeric argument, or the one-line error naming it."""
    try:
        return kind(value)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise XmError(f"{what} must be {noun}, got {value!r}") from None


@command("sched-credit", "[-d <Domain> [-w[=WEIGHT]|-c[=CAP]]]",
         "Get/set credit scheduler parameters.",
         (Opt("d", "domain", "Domain to modify.", "DOMAIN"),
          Opt("w", "weight", "Weight (int).", "WEIGHT"),
          Opt("c", "cap", "Cap (int, % of one CPU; 0 = no cap).", "CAP")), max_args=0)
def cmd_sched_credit(ctx, opts, args):
    if ("weight" in opts or "cap" in opts) and "domain" not in opts:
        raise XmError("Must specify a domain with -d to set parameters.")
    if "domain" in opts:
        dom = opts["domain"]
        if "weight" in opts or "cap" in opts:
            body = {}
            if "weight" in opts:
                body["weight"] = _int_arg(opts["weight"], "weight")
            if "cap" in opts:
                body["cap"] = _int_arg(opts["cap"], "cap")
            ctx.client.post(f"/api/domains/{_dom(dom)}/sched-credit", body)
            return 0
        doms = [ctx.client.get(f"/api/domains/{_dom(dom)}")]
    else:
        doms = ctx.client.get("/api/domains")["domains"]
    print(fmt.SCHED_CREDIT_HEADER)
    for d in doms:
        print(fmt.sched_credit_row(d))
    return 0


@command("vcpu-set", "<Domain> <vCPUs>", "Set the number of active VCPUs for allowed for the domain.",
         min_args=2, max_args=2)
def cmd_vcpu_set(ctx, opts, args):
    ctx.client.post(f"/api/domains/{_dom(args[0])}/vcpu-set", {"vcpus": _int_arg(args[1], "vCPUs")})
    return 0


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


@command("mem-set", "<Domain> <Mem>", "Set the current memory usage for a domain.", min_args=2, max_args=2)
def cmd_mem_set(ctx, opts, args):
    ctx.client.post(f"/api/domains/{_dom(args[0])}/mem-set", {"memory": parse_mem(args[1])})
    return 0


@command("mem-max", "<Domain> <Mem>", "Set the maximum amount reservation for a domain.",
         min_args=2, max_args=2)
def cmd_mem_max(ctx, opts, args):
    ctx.client.post(f"/api/domains/{_dom(args[0])}/mem-max", {"memory": parse_mem(args[1])})
    return 0


@command("sysrq", "<Domain> <letter>", "Send a sysrq to a domain.", min_args=2, max_args=2)
def cmd_sysrq(ctx, opts, args):
    ctx.client.post(f"/api/domains/{_dom(args[0])}/sysrq", {"key": args[1]})
    return 0


@command("rename", "<Domain> <NewDomainName>", "Rename a domain.", min_args=2, max_args=2)
def cmd_rename(ctx, opts, args):
    ctx.client.post(f"/api/domains/{_dom(args[0])}/rename", {"name": args[1]})
    return 0


@command("dump-core", "[-L|--live] [-C|--crash] [-R|--reset] <Domain> [Filename]",
         "Dump core for a specific domain.",
         (Opt("L", "live", "Dump core without pausing the domain."),
          Opt("C", "crash", "Crash domain after dumping core."),
          Opt("R", "reset", "Reset domain after dumping core.")), min_args=1, max_args=2)
def cmd_dump_core(ctx, opts, args):
    if "crash" in opts and "reset" in opts:
        raise XmError("You may not specify more than one '-CR' option.")
    file = os.path.abspath(args[1]) if len(args) > 1 else None
    print(f"Dumping core of domain: {args[0]} ...")
    ctx.client.post(f"/api/domains/{_dom(args[0])}/dump-core",
                    {"file": file, "live": "live" in opts, "crash": "crash" in opts, "reset": "reset" in opts})
    return 0


def _num_arg(value: str, what: str) -> float:
    return _number(value, what, float)


@command("sched-sedf", "[<Domain> [-p ms] [-s ms] [-l ms] [-e 0|1] [-w weight]]",
         "Get/set EDF parameters (enforced as a CPU cap and share; see the README).",
         (Opt("p", "period", "Relative deadline (ms).", "MS"), Opt("s", "slice", "Worst-case execution time (ms).", "MS"),
          Opt("l", "latency", "Scaled period (ms) when domain performs heavy I/O.", "MS"),
          Opt("e", "extra", "Flag (0 or 1) controls if domain can run in extra time.", "FLAG"),
          Opt("w", "weight", "CPU period weight (int).", "WEIGHT")), max_args=6)
def cmd_sched_sedf(ctx, opts, args):
    sets = {}
    if len(args) == 6:
        # Xen 3.0's positional form: <Dom> period slice latency extratime weight, in ns.
        p, sl, lat = (_num_arg(a, "sedf parameter") / 1e6 for a in args[1:4])
        sets = {"period": p, "slice": sl, "latency": lat, "extratime": int(_num_arg(args[4], "extratime")),
                "weight": int(_num_arg(args[5], "weight"))}
        args = args[:1]
    elif len(args) > 1:
        raise XmError(f"'xm sched-sedf' takes a domain and options, or the 3.0 form with 5 values.\n\n"
                      f"{usage('sched-sedf')}".rstrip())
    for key, name in (("period", "period"), ("slice", "slice"), ("latency", "latency")):
        if key in opts:
            sets[name] = _num_arg(opts[key], key)
    if "extra" in opts:
        sets["extratime"] = int(_num_arg(opts["extra"], "extratime"))
    if "weight" in opts:
        sets["weight"] = int(_num_arg(opts["weight"], "weight"))
    if sets:
        if not args:
            raise XmError("Must specify a domain to set parameters.")
        ctx.client.post(f"/api/domains/{_dom(args[0])}/sched-sedf", sets)
        return 0
    doms = [ctx.client.get(f"/api/domains/{_dom(args[0])}")] if args else ctx.client.get("/api/domains")["domains"]
    print(fmt.SEDF_HEADER)
    for d in doms:
        print(fmt.sedf_row(d))
    return 0


@command("sched-bvt", "<Domain> <mcuadv> <warpback> <warpvalue> <warpl> <warpu>",
         "Set Borrowed Virtual Time parameters (3.0): mcuadv maps to the credit weight "
         "(weight = 2560/mcuadv); the warp values do not apply and are ignored.", min_args=6, max_args=6)
def cmd_sched_bvt(ctx, opts, args):
    mcuadv = int(_num_arg(args[1], "mcuadv"))
    if mcuadv <= 0:
        raise XmError(f"mcuadv must be positive, got {mcuadv}")
    ctx.client.post(f"/api/domains/{_dom(args[0])}/sched-credit", {"weight": max(1, 2560 // mcuadv)})
    return 0


@command("sched-bvt-ctxallow", "<Allow>", "Set the BVT context switch allowance (3.0; accepted, no effect).",
         min_args=1, max_args=1)
def cmd_sched_bvt_ctxallow(ctx, opts, args):
    _num_arg(args[0], "allowance")
    return 0


# -------------------------------------------------------------- devices
@command("block-list", "<Domain> [--long]", "List virtual block devices for a domain.",
         (Opt("l", "long", "List the devices in SXP."),), min_args=1, max_args=1)
def cmd_block_list(ctx, opts, args):
    devs = ctx.client.get(f"/api/domains/{_dom(args[0])}/devices/vbd")["devices"]
    if "long" in opts:
        sys.stdout.write("".join(fmt.block_long(d) for d in devs))
    else:
        # As network-list: Xen printed the header only above at least one device.
        for i, d in enumerate(devs):
            if i == 0:
                print(fmt.BLOCK_HEADER)
            print(fmt.block_row(d))
    return 0


@command("block-attach", "<Domain> <BackDev> <FrontDev> <Mode> [BackDomain]",
         "Create a new virtual block device.", min_args=4, max_args=5)
def cmd_block_attach(ctx, opts, args):
    ctx.client.post(f"/api/domains/{_dom(args[0])}/block-attach",
                    {"uname": args[1], "vdev": args[2], "mode": args[3],
                     "backend": args[4] if len(args) > 4 else "0"})
    return 0


@command("block-detach", "<Domain> <DevId> [-f|--force]", "Destroy a domain's virtual block device.",
         (Opt("f", "force", "Drop the device even if the guest does not release it."),),
         min_args=2, max_args=2)
def cmd_block_detach(ctx, opts, args):
    ctx.client.post(f"/api/domains/{_dom(args[0])}/block-detach", {"dev": args[1], "force": "force" in opts})
    return 0


NETWORK_ATTACH_KEYS = ("type", "mac", "bridge", "ip", "script", "backend", "vifname", "rate", "model", "accel")


@command("network-attach", "<Domain> [type=<type>] [mac=<mac>] [bridge=<bridge>] [ip=<ip>] "
         "[script=<script>] [backend=<BackDomain>] [vifname=<name>] [rate=<rate>] [model=<model>]",
         "Create a new virtual network device.", min_args=1, max_args=11)
def cmd_network_attach(ctx, opts, args):
    config = {}
    for a in args[1:]:
        k, sep, v = a.partition("=")
        if not sep or not v or k not in NETWORK_ATTACH_KEYS:
            raise XmError(f"Invalid argument: {a}\n\n{usage('network-attach')}".rstrip())
        config[k] = v
    ctx.client.post(f"/api/domains/{_dom(args[0])}/devices/vif", {"config": config})
    return 0


@command("network-detach", "<Domain> <DevId> [-f|--force]", "Destroy a domain's virtual network device.",
         (Opt("f", "force", "Remove the device's backend even if the guest does not release it."),),
         min_args=2, max_args=2)
def cmd_network_detach(ctx, opts, args):
    query = "?force=1" if "force" in opts else ""
    ctx.client.delete(f"/api/domains/{_dom(args[0])}/devices/vif/{quote(args[1], safe='')}{query}")
    return 0


@command("network-list", "<Domain> [--long]", "List virtual network interfaces for a domain.",
         (Opt("l", "long", "List the devices in SXP."),), min_args=1, max_args=1)
def cmd_network_list(ctx, opts, args):
    devs = ctx.client.get(f"/api/domains/{_dom(args[0])}/devices/vif")["devices"]
    if "long" in opts:
        sys.stdout.write("".join(fmt.network_long(d) for d in devs))
    else:
        # Xen prints the header only above at least one device.
        for i, d in enumerate(devs):
            if i == 0:
                print(fmt.NETWORK_HEADER)
            print(fmt.network_row(d))
    return 0


# ------------------------------------------------------------------- PCI
@command("pci-attach", "[-o k=v] <Domain> <[DDDD:]BB:SS.F> [VSlot]",
         "Insert a new pass-through PCI device (bound to vfio-pci on the host).",
         (Opt("o", "options", "msitranslate=0|1 or power_mgmt=0|1 (accepted; no meaning with VFIO).", "K=V"),),
         min_args=2, max_args=3)
def cmd_pci_attach(ctx, opts, args):
    if "options" in opts:
        k, sep, v = opts["options"].partition("=")
        if not sep or k not in ("msitranslate", "power_mgmt") or v not in ("0", "1"):
            raise XmError(f"Invalid pci attach option: {opts['options']}")
    body = {"dev": args[1]}
    if len(args) > 2:
        body["vslot"] = args[2]
    ctx.client.post(f"/api/domains/{_dom(args[0])}/pci-attach", body)
    return 0


@command("pci-detach", "<Domain> <[DDDD:]BB:SS.F>", "Remove a domain's pass-through PCI device.",
         min_args=2, max_args=2)
def cmd_pci_detach(ctx, opts, args):
    ctx.client.post(f"/api/domains/{_dom(args[0])}/pci-detach", {"dev": args[1]})
    return 0


@command("pci-list", "<Domain>", "List pass-through PCI devices for a domain.", min_args=1, max_args=1)
def cmd_pci_list(ctx, opts, args):
    sys.stdout.write(fmt.pci_list(ctx.client.get(f"/api/domains/{_dom(args[0])}/devices/pci")["devices"]))
    return 0


@command("pci-list-assignable-devices", "", "List host PCI devices that can be passed through "
         "(bound to vfio-pci).", max_args=0)
def cmd_pci_list_assignable(ctx, opts, args):
    for bdf in ctx.client.get("/api/pci/assignable")["devices"]:
        print(bdf)
    return 0


@command("pci-assignable-add", "<[DDDD:]BB:SS.F>", "Make a host PCI device assignable: bind it to vfio-pci "
         "(what pciback.hide did).", min_args=1, max_args=1)
def cmd_pci_assignable_add(ctx, opts, args):
    ctx.client.post("/api/pci/assignable", {"dev": args[0]})
    return 0


@command("pci-assignable-remove", "[-r] <[DDDD:]BB:SS.F>", "Release a host PCI device from vfio-pci.",
         (Opt("r", "rebind", "Bind it to the driver it had before pci-assignable-add."),),
         min_args=1, max_args=1)
def cmd_pci_assignable_remove(ctx, opts, args):
    ctx.client.post("/api/pci/assignable-remove", {"dev": args[0], "rebind": "rebind" in opts})
    return 0


@command("vtpm-list", "<Domain> [--long]", "List virtual TPM devices for a domain.",
         (Opt("l", "long", "List the devices in SXP."),), min_args=1, max_args=1)
def cmd_vtpm_list(ctx, opts, args):
    devs = ctx.client.get(f"/api/domains/{_dom(args[0])}/devices/vtpm")["devices"]
    if "long" in opts:
        sys.stdout.write("".join(fmt.vtpm_long(d) for d in devs))
        return 0
    for i, d in enumerate(devs):
        if i == 0:
            print(fmt.VTPM_HEADER)
        print(fmt.vtpm_row(d))
    return 0


# -------------------------------------------------------------------- HVM
@command("vncviewer", "[--print] <Domain>",
         "Show an HVM domain's screen: run vncviewer on its VNC display, or print the address.",
         (Opt(None, "print", "Print the display as HOST:DISPLAY (port 5900+DISPLAY) instead of "
              "starting a viewer."),), min_args=1, max_args=1)
def cmd_vncviewer(ctx, opts, args):
    info = ctx.client.get(f"/api/domains/{_dom(args[0])}/vnc")
    if "port" not in info:
        raise XmError(f"Domain {info.get('name', args[0])} has no VNC server (set vnc=1 in its config; "
                      "its screen is still in the web console)")
    host = info["host"] if ":" not in info["host"] else f"[{info['host']}]"
    addr = f"{host}:{info['port'] - 5900}"
    if "print" in opts:
        print(addr)
        return 0
    import shutil
    viewer = shutil.which("vncviewer") or shutil.which("xtightvncviewer")
    if viewer is None:
        raise XmError(f"no vncviewer installed; point a VNC viewer at {addr} (port {info['port']})")
    os.execv(viewer, [viewer, addr])


def _start_vncviewer(ctx, dom: str) -> None:
    """vncviewer=1 / vncconsole=1: a viewer on the new domain's display, in
    the background as Xen's xm did; without one installed, say where to look."""
    import shutil
    import subprocess
    try:
        info = ctx.client.get(f"/api/domains/{_dom(dom)}/vnc")
    except XmError as e:
        print(f"vncviewer: {e}", file=sys.stderr)
        return
    if "port" not in info:
        print(f"vncviewer: domain {dom} has no VNC server (vnc=1)", file=sys.stderr)
        return
    addr = f"{info['host']}:{info['port'] - 5900}"
    viewer = shutil.which("vncviewer") or shutil.which("xtightvncviewer")
    if viewer is None or not os.environ.get("DISPLAY"):
        print(f"vncviewer: no viewer to start here; the display is {addr} (port {info['port']})",
              file=sys.stderr)
        return
    subprocess.Popen([viewer, addr], stdin=subprocess.DEVNULL, start_new_session=True)


@command("qemu-monitor", "<Domain> [Command]",
         "The device model's monitor (QEMU's, the manual's Ctrl+Alt+2): run one command, "
         "or read commands from the terminal until EOF or 'quit'.", min_args=1)
def cmd_qemu_monitor(ctx, opts, args):
    dom = args[0]
    path = f"/api/domains/{_dom(dom)}/qemu-monitor"

    def run(line: str) -> None:
        out = ctx.client.post(path, {"command": line})["output"]
        sys.stdout.write(out.replace("\r\n", "\n"))
        sys.stdout.flush()
    if len(args) > 1:
        run(" ".join(args[1:]))
        return 0
    ctx.client.get(f"/api/domains/{_dom(dom)}")     # a clear error before any prompt
    tty = sys.stdin.isatty()
    if tty:
        print(f"QEMU monitor of {dom} (through xend); 'quit' or Ctrl-D leaves it, the domain runs on.")
    while True:
        try:
            line = input("(qemu) " if tty else "")
        except EOFError:
            break
        if line.strip() in ("quit", "q", "exit"):
            # HMP's own quit would stop QEMU; here it leaves the monitor.
            break
        try:
            run(line)
        except XmError as e:
            print(f"Error: {e}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ vnets
@command("vnet-list", "[-l|--long] [<VnetId> ...]", "List Vnets.",
         (Opt("l", "long", "List Vnets as SXP (as without it)."),))
def cmd_vnet_list(ctx, opts, args):
    if args:
        # Naming vnets implies the long form, as in Xen.
        for a in args:
            sys.stdout.write(sxp.pretty(ctx.client.get(f"/api/vnets/{quote(a, safe='')}")["sxp"]))
        return 0
    # Xen printed each vnet's SXP, with or without -l (-l is accepted).
    for v in ctx.client.get("/api/vnets")["vnets"]:
        sys.stdout.write(sxp.pretty(v["sxp"]))
    return 0


@command("vnet-create", "<ConfigFile>", "Create a vnet from ConfigFile.", min_args=1, max_args=1)
def cmd_vnet_create(ctx, opts, args):
    fn = args[0]
    try:
        with open(fn) as f:
            text = f.read()
    except FileNotFoundError:
        raise XmError(f"File not found: {fn}") from None
    except OSError as e:
        raise XmError(f"Unable to read vnet config file {fn}: {e.strerror}") from None
    from ..net.vnet import VnetConfig, VnetError
    try:
        VnetConfig.parse(text, fn)          # a clear error naming the file, before xend
    except VnetError as e:
        raise XmError(str(e)) from None
    ctx.client.post("/api/vnets", {"config": text})
    return 0


@command("vnet-delete", "<VnetId>", "Delete a Vnet.", min_args=1, max_args=1)
def cmd_vnet_delete(ctx, opts, args):
    ctx.client.delete(f"/api/vnets/{quote(args[0], safe='')}")
    return 0


@command("help", "[--long] [<Command>]", "Display this message or help for a command.",
         (Opt(None, "long", "Show the full list of subcommands."),), common=True, max_args=1)
def cmd_help(ctx, opts, args):
    if args:
        name = resolve(args[0])
        if name is None:
            raise XmError(f"Subcommand {args[0]} not found!")
        sys.stdout.write(usage(name, full=True))
        return 0
    sys.stdout.write(long_help() if "long" in opts or ctx.long_help else short_help())
    return 0


# ------------------------------------------------------------------- help
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
    for c in COMMANDS.values():
        if c.common:
            lines.append(f"  {c.name:<14} {c.help}")
    lines += ["", "<Domain> can either be the Domain Name or Id.",
              "For more help on 'xm' see the xm(1) man page.",
              "For more help on 'xm create' see the xmdomain.cfg(5)  man page.", ""]
    return "\n".join(lines)


def long_help() -> str:
    lines = ["Usage: xm <subcommand> [args]", "", "Control, list, and manipulate Xen guest instances.", "",
             "xm full list of subcommands:", ""]
    for c in sorted(COMMANDS.values(), key=lambda c: c.name):
        lines.append(f"  {c.name:<22} {c.help}")
    lines += ["", "<Domain> can either be the Domain Name or Id.",
              "For more help on 'xm' see the xm(1) man page.",
              "For more help on 'xm create' see the xmdomain.cfg(5)  man page.", ""]
    return "\n".join(lines)


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


@dataclass
class Context:
    name: str
    paths: Paths
    long_help: bool = False
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.paths)
        return self._client
