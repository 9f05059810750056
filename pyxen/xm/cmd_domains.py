"""xm's commands on domains that do more than pass their words on: list,
console, shutdown/reboot, migrate, the name/id look-ups, uptime, dump-core,
the device model's monitor and the snapshot list."""

from __future__ import annotations

import os
import sys
import time

from . import format as fmt
from .client import XmError
from .commands import dom_path as _dom, usage

def cmd_list(ctx, opts, args):
    long = "long" in opts
    if "cluster" in opts:
        if long or args:
            raise XmError("--cluster lists every domain of the cluster: it takes no -l and no domain")
        doms = ctx.client.get("/api/domains?cluster=1")["domains"]
        sys.stdout.write(fmt.list_cluster_table(doms))
        return 0
    if args:
        doms = [ctx.client.get(f"/api/domains/{_dom(a)}?long={int(long)}") for a in args]
    else:
        doms = ctx.client.get(f"/api/domains?long={int(long)}")["domains"]
    sys.stdout.write(fmt.list_long(doms) if long else fmt.list_table(doms))
    return 0


def cmd_console(ctx, opts, args):
    from .console import attach
    try:
        attach(ctx.client, args[0])
    except XmError as e:
        if "quiet" in opts and e.code == 3:
            return 1
        raise
    return 0


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
            ctx.call("shutdown", {"dom": t, "reason": reason, "wait": False})
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
                ctx.call("shutdown", {"dom": t, "reason": reason, "wait": True, "timeout": SHUTDOWN_WAIT})
            except XmError as e:
                if e.code != 3 and "is not running" not in str(e):
                    raise
            print(f"Domain {t} terminated")
        if "all" in opts and not failed:
            print("All domains terminated")
    return 1 if failed else 0


def cmd_shutdown(ctx, opts, args):
    reason = "reboot" if "reboot" in opts else "halt" if "halt" in opts else "poweroff"
    return _shutdown(ctx, opts, args, reason)


def cmd_reboot(ctx, opts, args):
    return _shutdown(ctx, opts, args, "reboot")


def cmd_migrate(ctx, opts, args):
    dom, host = args
    values = {"dom": dom, "host": host, "live": "live" in opts}
    if "copy-storage" in opts:
        values["copy_storage"] = True
    if "shared-disk" in opts:
        values["shared_disks"] = opts["shared-disk"]
    for key in ("port", "resource", "downtime"):
        if key in opts:
            values[key] = opts[key]     # checked (ranges too) by the operation table
    show = "progress" in opts or sys.stderr.isatty()
    if show:
        from .progress import MigrationProgress
        with MigrationProgress(ctx.client, dom, sys.stderr) as prog:
            res = ctx.call("migrate", values)
            prog.done(res)
    else:
        # No terminal: no progress line, but the summary (it printed nothing).
        from .progress import summary
        sys.stderr.write(summary(ctx.call("migrate", values)))
    return 0


def cmd_domid(ctx, opts, args):
    print(ctx.client.get(f"/api/domains/{_dom(args[0])}")["domid"])
    return 0


def cmd_domname(ctx, opts, args):
    print(ctx.client.get(f"/api/domains/{_dom(args[0])}")["name"])
    return 0


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


def cmd_dump_core(ctx, opts, args):
    if "crash" in opts and "reset" in opts:
        raise XmError("You may not specify more than one '-CR' option.")
    file = os.path.abspath(args[1]) if len(args) > 1 else None
    print(f"Dumping core of domain: {args[0]} ...")
    ctx.call("dump-core", {"dom": args[0], "file": file, "live": "live" in opts, "crash": "crash" in opts,
                           "reset": "reset" in opts})
    return 0


def cmd_qemu_monitor(ctx, opts, args):
    dom = args[0]

    def run(line: str) -> None:
        out = ctx.call("qemu-monitor", {"dom": dom, "command": line})["output"]
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
        if not line.strip():
            continue
        if line.strip() in ("quit", "q", "exit"):
            # HMP's own quit would stop QEMU; here it leaves the monitor.
            break
        try:
            run(line)
        except XmError as e:
            print(f"Error: {e}", file=sys.stderr)
    return 0


def cmd_snapshot_list(ctx, opts, args):
    snaps = ctx.client.get(f"/api/domains/{_dom(args[0])}/snapshots")["snapshots"]
    sys.stdout.write(fmt.snapshot_table(snaps))
    return 0
