"""xm's vCPU and scheduler commands: vcpu-list, sched-credit, sched-sedf and
Xen 3.0's BVT spellings."""

from __future__ import annotations

from . import format as fmt
from .args import int_arg as _int_arg, num_arg as _num_arg
from .client import XmError
from .commands import dom_path as _dom, usage

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
            ctx.call("sched-credit", {"dom": dom, **body})
            return 0
        doms = [ctx.client.get(f"/api/domains/{_dom(dom)}")]
    else:
        doms = ctx.client.get("/api/domains")["domains"]
    print(fmt.SCHED_CREDIT_HEADER)
    for d in doms:
        print(fmt.sched_credit_row(d))
    return 0


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
        ctx.call("sched-sedf", {"dom": args[0], **sets})
        return 0
    doms = [ctx.client.get(f"/api/domains/{_dom(args[0])}")] if args else ctx.client.get("/api/domains")["domains"]
    print(fmt.SEDF_HEADER)
    for d in doms:
        print(fmt.sedf_row(d))
    return 0


def cmd_sched_bvt(ctx, opts, args):
    mcuadv = int(_num_arg(args[1], "mcuadv"))
    if mcuadv <= 0:
        raise XmError(f"mcuadv must be positive, got {mcuadv}")
    ctx.call("sched-credit", {"dom": args[0], "weight": max(1, 2560 // mcuadv)})
    return 0


def cmd_sched_bvt_ctxallow(ctx, opts, args):
    _num_arg(args[0], "allowance")
    return 0
