"""xm's host-wide commands: info, dmesg, log, top, the event stream, and the
cluster's hosts (host-list, host-evacuate, host-maintenance)."""

from __future__ import annotations

import sys
import time

from . import format as fmt
from .args import int_arg as _int_arg
from .client import XmError

def cmd_info(ctx, opts, args):
    if "config" in opts:
        sys.stdout.write(ctx.paths.xend_config.read_text() if ctx.paths.xend_config.exists() else "")
        return 0
    sys.stdout.write(fmt.info(ctx.client.get("/api/host")["info"]))
    return 0


def cmd_dmesg(ctx, opts, args):
    if "clear" in opts:
        ctx.call("dmesg-clear", {})
        return 0
    lines = ctx.client.get("/api/dmesg")["lines"]
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


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
            if event.startswith("cluster-"):
                # A cluster's change (a host joined or was lost, a domain's
                # lock moved): no domid, it may be another host's.
                what = data.get("name") or data.get("uuid") or ""
                tail = f" {data['detail']}" if data.get("detail") else ""
                print(f"{stamp} {event} host={data.get('host', '')}{' ' + what if what else ''}{tail}",
                      flush=True)
            else:
                print(f"{stamp} {event:<9} {data['name']} (id={data['domid']}) {data['state']}", flush=True)
        seen += 1
        if limit is not None and seen >= limit:
            break
    return 0


def cmd_log(ctx, opts, args):
    sys.stdout.write(ctx.client.get("/api/log")["log"])
    return 0


def cmd_host_list(ctx, opts, args):
    sys.stdout.write(fmt.host_table(ctx.call("hosts", {})["hosts"]))
    return 0


def cmd_host_evacuate(ctx, opts, args):
    res = ctx.call("host-evacuate", {"host": args[0]})
    for m in res["moved"]:
        print(f"Domain {m['name']} migrated to {m['host']}")
    for name, why in sorted(res["refused"].items()):
        print(f"Domain {name} stays: {why}", file=sys.stderr)
    for name, why in sorted(res["failed"].items()):
        print(f"Domain {name} failed to migrate: {why}", file=sys.stderr)
    if res.get("maintenance"):
        print(f"Host {args[0]} is in maintenance until `xm host-maintenance {args[0]} off`")
    return 1 if res["refused"] or res["failed"] else 0


def cmd_host_maintenance(ctx, opts, args):
    host, what = args
    if what not in ("on", "off"):
        raise XmError(f"host-maintenance: expected on or off after the host name, not {what!r}")
    res = ctx.call("host-maintenance", {"host": host, "on": what == "on"})
    state = "in maintenance" if res["maintenance"] else "out of maintenance"
    print(f"Host {host} is {state}{'' if res['changed'] else ' (it already was)'}")
    return 0
