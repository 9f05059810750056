"""Host failure end to end: real xends, a real guest, injected failures.

On :class:`bench.clusterbed.Bed` (three xends in namespaces, three etcd
members), one guest with ``on_host_failure = 'restart'`` runs.  Each round
fails the host it runs on, alternating the two ways a host fails:

* ``kill``: the machine dies — SIGKILL to every process in its namespace
  (xend, the lease keeper, the QEMU); nobody renews its lease;
* ``cut``: nftables in its namespace drops all traffic to the etcd members;
  its xend fences itself (kills the restart domain's QEMU) at TTL − margin.

Timed from the injection (just before the kill or the nft rule) to:
``lease_gone`` (an independent ``etcdctl watch`` sees the host's member
record deleted), ``qemu`` (a QEMU with the guest's uuid exists on a
survivor) and ``answer`` (the guest on the survivor prints its ``login:``
prompt on the console log: it booted and its getty answers).

A **double run** is any instant (sampled every 50 ms) at which QEMUs of the
guest's uuid that are not stopped (state Z/T/X) exist under two hosts'
roots, or a round in which more than one survivor started it; afterwards
the owner key (``cluster/owners/<uuid>``) must name the one host running it
and the failover claim must say ``started``.  Then the failed host comes
back (xend started again / the rule removed), must rejoin as ``up`` and must
not run the guest, and the next round fails the new owner.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path

from .clusterbed import Bed, MemberWatch

SAMPLE = 0.05
ROUND_DEADLINE = 120.0


def _live_qemus(uuid: str) -> list[int]:
    """PIDs of running (not zombie, not stopped) QEMUs of *uuid*."""
    out = []
    needle = b"-uuid\0" + uuid.encode() + b"\0"
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            if b"qemu-system" not in cmd or needle not in cmd:
                continue
            with open(f"/proc/{d}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in (b"Z", b"T", b"t", b"X"):
            out.append(int(d))
    return out


def _root_of(pid: int, roots: dict[str, Path]) -> str | None:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return None
    for name, root in roots.items():
        if cwd.startswith(f"{root}/") or f"{root}/".encode() in cmd:
            return name
    return None


def running_on(uuid: str, roots: dict[str, Path]) -> set[str]:
    return {h for h in (_root_of(p, roots) for p in _live_qemus(uuid)) if h}


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _answered(p: Path, offset: int, mark: bytes = b"login:") -> bool:
    try:
        with open(p, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset:
                offset = 0          # rotated (copy and truncate): read it all
            f.seek(offset)
            return mark in f.read()
    except OSError:
        return False


def _uuid(bed: Bed, host: str, dom: str) -> str:
    out = bed.nodes[host].xm("list", "-l", dom).stdout
    m = re.search(r"\(uuid ([0-9a-f-]+)\)", out)
    if not m:
        raise RuntimeError(f"no uuid for {dom} on {host}: {out[-300:]}")
    return m.group(1)


def _get(bed: Bed, key: str) -> dict | None:
    res = bed.ctl("get", key, "--print-value-only")
    return json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else None


def _wait(pred, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def one_round(bed: Bed, watch: MemberWatch, uuid: str, dom: str, mode: str) -> dict:
    roots = {n: node.root for n, node in bed.nodes.items()}
    where = _wait(lambda: running_on(uuid, roots), 60, f"{dom} to run somewhere")
    if len(where) != 1:
        raise RuntimeError(f"{dom} runs on {sorted(where)} before the round")
    victim = bed.nodes[next(iter(where))]
    others = [n for n in bed.nodes.values() if n is not victim]
    offsets = {n.name: _size(n.console_log(dom)) for n in others}
    watch.deleted.pop(victim.name, None)
    overlaps, samples, new, t_qemu, t_answer, t_old_gone, t_init = 0, 0, None, None, None, None, None
    t0 = time.monotonic()
    if mode == "kill":
        victim.kill_everything()
    else:
        bed.net.cut(victim.ns, [m.ip for m in bed.etcd.members])
    while time.monotonic() - t0 < ROUND_DEADLINE:
        now = time.monotonic()
        on = running_on(uuid, roots)
        samples += 1
        if len(on) > 1:
            overlaps += 1
        if victim.name not in on and t_old_gone is None:
            t_old_gone = now - t0
        for h in on - {victim.name}:
            if new is None:
                new, t_qemu = h, now - t0
        if new is not None and t_init is None and _answered(bed.nodes[new].console_log(dom), offsets[new],
                                                            b"pyxen-init: started"):
            t_init = now - t0
        if new is not None and _answered(bed.nodes[new].console_log(dom), offsets[new]):
            t_answer = now - t0
            break
        time.sleep(SAMPLE)
    # Keep looking a while: a second survivor starting it would show here.
    end = time.monotonic() + 3
    starters = {new} if new else set()
    while time.monotonic() < end:
        on = running_on(uuid, roots)
        if len(on) > 1:
            overlaps += 1
        starters |= on - {victim.name}
        time.sleep(SAMPLE)
    lost = watch.deleted.get(victim.name)
    owner = (_get(bed, f"cluster/owners/{uuid}") or {}).get("host")
    claim = _get(bed, f"cluster/failover/{uuid}") or {}
    r = {"mode": mode, "failed": victim.name, "restarted_on": new,
         "lease_gone_s": round(lost - t0, 2) if lost else None,
         "old_copy_gone_s": round(t_old_gone, 2) if t_old_gone is not None else None,
         "qemu_s": round(t_qemu, 2) if t_qemu is not None else None,
         "init_s": round(t_init, 2) if t_init is not None else None,
         "answer_s": round(t_answer, 2) if t_answer is not None else None,
         "starters": sorted(starters), "overlap_samples": overlaps, "samples": samples,
         "owner_after": owner, "claim_state": claim.get("state")}
    r["double_run"] = overlaps > 0 or len(starters) > 1 or (new is not None and owner != new)
    # The failed host comes back; it must rejoin and must not run the guest.
    if mode == "kill":
        victim.xend_start()
    else:
        bed.net.heal(victim.ns)
    survivor = bed.nodes[new] if new else others[0]
    _wait(lambda: victim.name in bed.hosts_up(survivor), 60, f"{victim.name} to rejoin")
    _wait(lambda: dom not in victim.domains(), 30, f"{victim.name} to drop its copy of {dom}")
    if victim.name in running_on(uuid, roots):
        r["double_run"] = True
        r["returned_and_ran"] = True
    return r


def failures(bed: Bed, n: int = 20, progress=print) -> dict:
    """*n* rounds on *bed*, alternating kill and cut (the guest is created
    here, on host a)."""
    rounds = []
    a = bed.nodes["a"]
    res = a.xm("create", "--host", "a", str(bed.config("victim", on_host_failure="restart")))
    if res.returncode != 0:
        raise RuntimeError(f"xm create: {res.stderr.strip()}")
    uuid = _uuid(bed, "a", "victim")
    _wait(lambda: _answered(a.console_log("victim"), 0), 120, "the guest to boot on a")
    watch = MemberWatch(bed)
    try:
        for i in range(n):
            mode = "kill" if i % 2 == 0 else "cut"
            try:
                r = one_round(bed, watch, uuid, "victim", mode)
            except RuntimeError as e:
                # Reported, not hidden: the rounds so far stand, this one failed.
                progress(f"cluster: failure {i + 1}/{n}: stopped: {e}")
                rounds.append({"mode": mode, "error": str(e), "answer_s": None, "double_run": False})
                break
            progress(f"cluster: failure {i + 1}/{n}: {r}")
            rounds.append(r)
    finally:
        watch.close()
    return summarize(rounds)


def run(n: int = 20, progress=print, **timings) -> dict:
    """:func:`failures` on a bed of its own; xend's default timings unless
    *timings* (ttl, margin, grace) say otherwise."""
    with Bed(**timings) as bed:
        return failures(bed, n, progress)


def _med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 2) if xs else None


def summarize(rounds: list[dict]) -> dict:
    ans = [r["answer_s"] for r in rounds]
    out = {"rounds": rounds, "failures": len(rounds),
           "answer_median_s": _med(ans), "answer_max_s": max((x for x in ans if x is not None), default=None),
           "lease_gone_median_s": _med(r.get("lease_gone_s") for r in rounds),
           "qemu_median_s": _med(r.get("qemu_s") for r in rounds),
           "init_median_s": _med(r.get("init_s") for r in rounds),
           "errors": [r["error"] for r in rounds if "error" in r],
           "double_runs": sum(1 for r in rounds if r.get("double_run")),
           "missed": sum(1 for r in rounds if r["answer_s"] is None)}
    for mode in ("kill", "cut"):
        out[f"{mode}_answer_median_s"] = _med(r["answer_s"] for r in rounds if r.get("mode") == mode)
    return out
