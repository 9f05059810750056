"""Xen's exact text layouts for the outputs users script against."""

from __future__ import annotations

import time

from ..config import sxp

LIST_HEADER = "%-40s %5s %5s %5s %10s %9s" % ("Name", "ID", "Mem", "VCPUs", "State", "Time(s)")


def list_row(d: dict) -> str:
    vcpus = d.get("online_vcpus") or d.get("vcpus") or 0
    return "%-40s %5s %5d %5d %10s %8.1f" % (d["name"], d["domid"], d["memory"], vcpus,
                                            d["state"], d["cpu_time"])


def list_table(domains: list[dict]) -> str:
    rows = [LIST_HEADER] + [list_row(d) for d in sorted(domains, key=lambda d: d["name"])]
    return "\n".join(rows) + "\n"


# xm list --cluster: Xen's columns as xm list has them (so a script's
# fields 1-6 mean the same), then the host.  A row another host published
# carries its CPU time rounded to whole seconds.
CLUSTER_LIST_HEADER = LIST_HEADER + " Host"


def list_cluster_table(domains: list[dict]) -> str:
    rows = [CLUSTER_LIST_HEADER]
    for d in sorted(domains, key=lambda d: (d["name"], d.get("host", ""))):
        rows.append(list_row(dict(d, memory=d.get("memory") or 0, cpu_time=d.get("cpu_time") or 0.0))
                    + " " + str(d.get("host", "")))
    return "\n".join(rows) + "\n"


# xm host-list, in the style of xm list: a name column, then fixed widths.
HOST_LIST_HEADER = "%-24s %-21s %-11s %9s %5s %7s %9s" % (
    "Name", "Address", "State", "Free(MiB)", "VCPUs", "Domains", "Lease(s)")


def host_row(h: dict) -> str:
    addr = h.get("address") or "-"
    if h.get("relocation_port"):
        addr = f"{addr}:{h['relocation_port']}" if ":" not in addr else f"[{addr}]:{h['relocation_port']}"
    age = h.get("lease_age")
    return "%-24s %-21s %-11s %9d %5d %7d %9s" % (
        h["name"], addr, h.get("state", ""), h.get("free_memory") or 0, h.get("vcpus") or 0,
        h.get("domains") or 0, "-" if age is None else "%.1f" % age)


def host_table(hosts: list[dict]) -> str:
    return "\n".join([HOST_LIST_HEADER] + [host_row(h) for h in sorted(hosts, key=lambda h: h["name"])]) + "\n"


def list_long(domains: list[dict]) -> str:
    return "".join(sxp.pretty(d["sxp"]) for d in domains)


def info(rows: list[list[str]]) -> str:
    out = []
    for k, v in rows:
        out.append("%-23s: %s" % (k, v if v != "" else "(none)"))
    return "\n".join(out) + "\n"


def _hms(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    d = f"{days} day{'s' if days != 1 else ''}, " if days else ""
    return f"{d}{h:2d}:{m:02d}:{s:02d}"


UPTIME_HEADER = "%-33s %4s %s " % ("Name", "ID", "Uptime")


def uptime_row(d: dict) -> str:
    return ("%-32s %5s " % (d["name"], d["domid"])) + _hms(d["up_time"])


def uptime_short(d: dict, now_struct) -> str:
    import time
    up = int(d["up_time"])
    days, rem = divmod(up, 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    ds = f"{days} day{'s' if days != 1 else ''}, " if days else ""
    return f" {time.strftime('%H:%M:%S', now_struct)} up {ds}{h}:{m:02d}, {d['name']} ({d['domid']})"


VCPU_HEADER = "%-32s %5s %5s %5s %5s %9s %s" % ("Name", "ID", "VCPU", "CPU", "State", "Time(s)", "CPU Affinity")


def vcpu_row(name: str, domid, v: dict) -> str:
    if v["online"]:
        c = str(v["cpu"])
        s = ("r" if v["running"] else "-") + ("b" if v["blocked"] else "-") + ("p" if v.get("paused") else "-")
    else:
        c, s = "-", "--p"
    return "%-32s %5s %5d %5s %5s  %8.1f %s" % (name, domid, v["vcpu"], c, s, v["cpu_time"], v["affinity"])


SCHED_CREDIT_HEADER = "%-33s %4s %6s %4s" % ("Name", "ID", "Weight", "Cap")


def sched_credit_row(d: dict) -> str:
    return "%-32s %5s %6d %4d" % (d["name"], d["domid"], d["cpu_weight"], d["cpu_cap"])


BLOCK_HEADER = "Vdev  BE handle state evt-ch ring-ref BE-path "


def block_row(d: dict) -> str:
    return "%(idx)-5d  %(backend-id)-3d  %(handle)-3d   %(state)-3d    %(event-ch)-3d    %(ring-ref)-5d %(be-path)-30s  " % d


def block_long(d: dict) -> str:
    from ..config import sxp
    return sxp.pretty([d["idx"], ["vbd", ["backend-id", d["backend-id"]], ["virtual-device", d["idx"]],
                                  ["device-type", d["type"]], ["state", d["state"]],
                                  ["backend", d["be-path"]], ["uname", d["uname"]], ["dev", d["dev"]],
                                  ["mode", d["mode"]]]])


SEDF_HEADER = "%-33s %4s %-4s %-4s %-7s %-5s %-6s" % ("Name", "ID", "Period(ms)", "Slice(ms)", "Lat(ms)",
                                                     "Extra", "Weight")


def sedf_row(d: dict) -> str:
    s = d["sedf"]
    return "%-32s %5s %9.1f %9.1f %7.1f %6d %6d" % (d["name"], d["domid"], s["period"], s["slice"],
                                                  s["latency"], s["extratime"], s["weight"])
NETWORK_HEADER = "Idx BE     MAC Addr.     handle state evt-ch tx-/rx-ring-ref BE-path"


def network_row(d: dict) -> str:
    return ("%(idx)-3d "
            "%(backend-id)-3d"
            "%(mac)-17s    "
            "%(handle)-3d   "
            "%(state)-3d    "
            "%(event-ch)-3d   "
            "%(tx-ring-ref)-5d/%(rx-ring-ref)-5d   "
            "%(be-path)-30s  " % d)


def network_long(d: dict) -> str:
    from ..config import sxp
    fields = [["backend-id", d["backend-id"]], ["mac", d["mac"]], ["handle", d["handle"]],
              ["state", d["state"]], ["backend", d["be-path"]], ["tx-ring-ref", d["tx-ring-ref"]],
              ["rx-ring-ref", d["rx-ring-ref"]], ["event-channel", d["event-ch"]],
              ["vifname", d["vifname"]]]
    fields += [[k, v] for k, v in d.get("config", {}).items() if k not in ("mac", "vifname")]
    return sxp.pretty([d["idx"], ["vif"] + fields])


def pci_list(devs: list[dict]) -> str:
    """``xm pci-list``: Xen's columns; VSlt/VFn only when a device has a
    guest slot of its own.  Nothing at all when there are no devices."""
    if not devs:
        return ""
    devs = sorted(devs, key=lambda d: ((d.get("vslot") if d.get("vslot") is not None else 0x100),
                                       d["domain"], d["bus"], d["slot"], d["func"]))
    has_vslot = any(d.get("vslot") is not None for d in devs)
    lines = [("VSlt VFn " if has_vslot else "") + "domain bus  slot func"]
    for d in devs:
        row = "0x%04x 0x%02x 0x%02x 0x%x" % (d["domain"], d["bus"], d["slot"], d["func"])
        if has_vslot:
            vs, vf = ("0x%02x" % d["vslot"], "0x0") if d.get("vslot") is not None else ("-", "-")
            row = "%-4s %-3s " % (vs, vf) + row
        lines.append(row)
    return "\n".join(lines) + "\n"


VTPM_HEADER = "Idx  BE handle state evt-ch ring-ref BE-path"


def vtpm_row(d: dict) -> str:
    return ("%(idx)-3d   %(backend-id)-3d  %(handle)-3d   %(state)-3d    %(event-ch)-3d    "
            "%(ring-ref)-5d %(be-path)-30s  " % d)


def vtpm_long(d: dict) -> str:
    dev: list = [d["idx"], ["backend-id", d["backend-id"]]]
    if d.get("instance") is not None:
        dev.append(["instance", d["instance"]])
    if d.get("uuid"):
        dev.append(["uuid", d["uuid"]])
    dev += [["handle", d["handle"]], ["state", d["state"]], ["be-path", d["be-path"]]]
    return sxp.pretty(dev)


# xm snapshot-list, in xm list's manner: fixed columns, one row a snapshot,
# each after its parent; '*' marks the one the running guest descends from.
SNAPSHOT_HEADER = "%-24s %-19s %-6s %8s %s" % ("Name", "Time", "Type", "Size(MB)", "Parent")


def snapshot_row(s: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.get("created") or 0))
    size = f"{(s.get('size') or 0) / (1 << 20):.1f}" if s.get("kind") == "memory" else "-"
    name = s["name"] + ("*" if s.get("current") else "")
    return "%-24s %-19s %-6s %8s %s" % (name, when, s.get("kind", "?"), size, s.get("parent") or "-")


def snapshot_table(snaps: list[dict]) -> str:
    return "\n".join([SNAPSHOT_HEADER] + [snapshot_row(s) for s in snaps]) + "\n"
