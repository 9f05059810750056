"""Facts about the host for ``xm info`` and the Domain-0 row of ``xm list``."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

from .. import __version__ as pyxen_version

XEN_COMPAT = (3, 4, "-pyxen")   # the xm/xend generation whose formats we keep
DOM0_UUID = "00000000-0000-0000-0000-000000000000"


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, _, rest = line.partition(":")
        out[k] = int(rest.split()[0])
    return out


def _cpuinfo() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    procs = [blk for blk in text.split("\n\n") if blk.strip()]
    first = dict((k.strip(), v.strip()) for k, _, v in
                 (ln.partition(":") for ln in procs[0].splitlines())) if procs else {}
    sockets = {(dict((k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in p.splitlines()))
                .get("physical id", "0")) for p in procs}
    return {"first": first, "count": len(procs), "sockets": max(1, len(sockets))}


def nr_nodes() -> int:
    try:
        return max(1, len([d for d in os.listdir("/sys/devices/system/node") if d.startswith("node")]))
    except OSError:
        return 1


def host_cpu_seconds() -> float:
    """CPU time used on the host (all non-idle time), shown as Domain-0's."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def dom0_memory_mib() -> int:
    return _meminfo()["MemTotal"] // 1024


def info(accel: str, accel_detail: str, qemu_version: str, guest_memory_mib: int) -> list[tuple[str, str]]:
    """``xm info`` rows in Xen 3.4's order, with pyxen's additions before the last."""
    u = platform.uname()
    mem = _meminfo()
    cpu = _cpuinfo()
    first = cpu["first"]
    ncpu = os.cpu_count() or cpu["count"]
    cores = int(first.get("cpu cores", ncpu // cpu["sockets"]) or 1)
    siblings = int(first.get("siblings", cores) or cores)
    threads = max(1, siblings // max(1, cores))
    total = mem["MemTotal"] // 1024
    free = max(0, mem.get("MemAvailable", mem["MemFree"]) // 1024)
    flags = first.get("flags", "").split()
    virt = [c for c in ("vmx", "svm") if c in flags]
    cc = _compiler()
    return [
        ("host", socket.gethostname()),
        ("release", u.release),
        ("version", u.version),
        ("machine", u.machine),
        ("nr_cpus", str(ncpu)),
        ("nr_nodes", str(nr_nodes())),
        ("cores_per_socket", str(cores)),
        ("threads_per_core", str(threads)),
        ("cpu_mhz", str(int(float(first.get("cpu MHz", "0") or 0)))),
        ("hw_caps", ":".join(flags[:8])),
        ("virt_caps", " ".join("hvm" if c else c for c in virt) or ""),
        ("total_memory", str(total)),
        ("free_memory", str(free)),
        ("node_to_cpu", f"node0:0-{ncpu - 1}" if ncpu > 1 else "node0:0"),
        ("node_to_memory", f"node0:{free}"),
        ("xen_major", str(XEN_COMPAT[0])),
        ("xen_minor", str(XEN_COMPAT[1])),
        ("xen_extra", XEN_COMPAT[2]),
        ("xen_caps", "hvm-3.0-x86_64 hvm-3.0-x86_32"),
        ("xen_scheduler", "credit"),
        ("xen_pagesize", str(os.sysconf("SC_PAGE_SIZE"))),
        ("platform_params", "virt_start=0x0"),
        ("xen_changeset", f"pyxen {pyxen_version}"),
        ("cc_compiler", cc),
        ("cc_compile_by", "pyxen"),
        ("cc_compile_domain", "pyxen"),
        ("cc_compile_date", ""),
        ("accelerator", accel),
        ("accelerator_detail", accel_detail),
        ("qemu_version", qemu_version),
        ("guest_memory", str(guest_memory_mib)),
        ("xend_config_format", "4"),
    ]


def _compiler() -> str:
    # Xen printed the compiler that built the hypervisor; ours is the one that
    # built the Python running xend.
    comp = platform.python_compiler()  # e.g. "GCC 12.2.0"
    if comp.upper().startswith("GCC"):
        return "gcc version " + comp.split(None, 1)[1]
    return comp


def dom0_vcpus() -> list[dict]:
    """Domain-0's 'vCPUs' are the host's CPUs: vCPU n runs on CPU n."""
    out = []
    tck = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/stat").read_text().splitlines()[1:]:
        if not line.startswith("cpu"):
            break
        f = line.split()
        n = int(f[0][3:])
        busy = sum(int(x) for x in (f[1], f[2], f[3], f[6], f[7])) / tck
        out.append({"vcpu": n, "online": True, "cpu": n, "running": True, "blocked": False,
                    "paused": False, "cpu_time": busy, "affinity": "any cpu"})
    return out
