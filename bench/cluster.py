"""The cluster benchmark (``python -m bench --only cluster
[--cluster-failures N]``):

* **lock acquire latency**: ``DomainLock.acquire`` (the create-time
  transaction: owner and name keys compared absent, on the lease) and its
  release, *lock_runs* times against a three-member etcd on 127.0.0.1;
  median and p95 in ms (store level: what create adds).
* **host failure, end to end** (bench/clusterfail.py): three xends in
  network namespaces on a three-member etcd, one real TCG guest with
  ``on_host_failure = 'restart'``; *failures* injected failures of its
  host, alternating kill -9 of everything on it and an nftables cut from
  etcd, each timed from the injection to the guest answering (its login
  prompt) on the survivor, with double runs counted (two live QEMUs of the
  guest at any 50 ms sample, two starters, or an owner key naming another
  host); xend's default timings.
* **xm list --cluster**: on the same bed, every host with 30 paused
  domains; ``xm list --cluster`` (every host's rows) against ``xm list``
  (this host's 30) on one host, whole command wall time, medians.

Results: bench/results/cluster.json.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from pyxen.cluster import failover as fo_defaults
from pyxen.cluster.lock import DomainLock
from pyxen.cluster.membership import Membership
from pyxen.testing import etcd as etcdtest

from . import clusterfail
from .clusterbed import Bed

RESULTS = Path(__file__).resolve().parent / "results"
FAILURE_TARGET_S = 15.0
LIST_RATIO_TARGET = 1.5


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def lock_latency(stores, runs: int) -> dict:
    m = Membership(stores["a"], "a")
    m.join()
    lock = DomainLock(stores["a"], m)
    ms = []
    try:
        for i in range(runs):
            u = f"00000000-0000-0000-0000-{i:012d}"
            t = time.perf_counter()
            lock.acquire(u, f"bench{i}")
            ms.append((time.perf_counter() - t) * 1000)
            lock.release(u)
    finally:
        m.leave(revoke=True)
    return {"runs": runs, "median_ms": round(statistics.median(ms), 2), "p95_ms": round(pct(ms, 95), 2)}


def _time(node, *args, runs: int) -> list[float]:
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        res = node.xm(*args)
        ms.append((time.perf_counter() - t) * 1000)
        if res.returncode != 0:
            raise RuntimeError(f"xm {' '.join(args)}: {res.stderr.strip()}")
    return ms


def list_cost(bed, per_host: int = 30, runs: int = 15, progress=print) -> dict:
    """``xm list --cluster`` with every host running *per_host* paused
    domains against ``xm list`` on one of them, both timed on that host
    (the command's whole wall time, as a user sees it), alternating."""
    from concurrent.futures import ThreadPoolExecutor
    names = sorted(bed.nodes)

    def fill(h):
        node = bed.nodes[h]
        have = {d for d in node.domains() if d != "Domain-0"}
        for i in range(per_host - len(have)):
            cfg = bed.config(f"{h}-tiny{i}", memory=16)
            res = node.xm("create", "-p", "--host", h, str(cfg))
            if res.returncode != 0:
                raise RuntimeError(f"xm create on {h}: {res.stderr.strip()}")
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(fill, names))
    me = bed.nodes[names[0]]
    mine = len([d for d in me.domains() if d != "Domain-0"])
    want = sum(len([d for d in bed.nodes[h].domains() if d != "Domain-0"]) + 1 for h in names)
    deadline = time.monotonic() + 60
    while len(me.xm("list", "--cluster").stdout.splitlines()) - 1 < want:
        if time.monotonic() > deadline:
            raise RuntimeError("xm list --cluster did not show every host's domains in 60 s")
        time.sleep(0.5)
    progress(f"cluster: timing xm list ({mine} domains) and xm list --cluster ({want} rows)")
    plain, clus = [], []
    for _ in range(runs):
        plain += _time(me, "list", runs=1)
        clus += _time(me, "list", "--cluster", runs=1)
    p, c = statistics.median(plain), statistics.median(clus)
    ratio = round(c / p, 3)
    return {"hosts": len(names), "domains_per_host": per_host, "this_host_domains": mine, "rows": want,
            "runs": runs, "xm_list_ms": round(p, 1), "xm_list_cluster_ms": round(c, 1),
            "ratio": ratio, "pass": ratio <= LIST_RATIO_TARGET, "measured": True}


def run(failures: int = 20, lock_runs: int = 50, progress=print, per_host: int = 30) -> dict:
    why = etcdtest.available()
    if why:
        raise RuntimeError(why)
    root = Path(tempfile.mkdtemp(prefix="pxbench-etcd-"))
    c = etcdtest.EtcdCluster(root, 3)
    c.start()
    try:
        stores = {n: c.store(n) for n in "abc"}
        stores["a"].delete_prefix("")
        progress("cluster: lock acquire latency")
        lock = lock_latency(stores, lock_runs)
    finally:
        c.remove()
    with Bed() as bed:
        progress(f"cluster: {failures} injected host failures (kill -9 and etcd cut, alternating)")
        fo = clusterfail.failures(bed, failures, progress)
        progress(f"cluster: xm list --cluster, {len(bed.nodes)} hosts x {per_host} paused domains")
        lst = list_cost(bed, per_host, progress=progress)
    fo["pass"] = (fo["double_runs"] == 0 and fo["missed"] == 0 and not fo["errors"]
                  and fo["answer_median_s"] is not None and fo["answer_median_s"] <= FAILURE_TARGET_S)
    fo["no_double_runs_pass"] = fo["double_runs"] == 0 and fo["missed"] == 0 and not fo["errors"]
    return {"benchmark": "cluster", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "config": {"etcd_members": 3, "xends": 3, "lease_ttl_s": Membership.__init__.__defaults__[0],
                       "fence_margin_s": 3, "grace_s": fo_defaults.DEFAULT_GRACE, "failures": failures,
                       "timings": "xend's defaults"},
            "lock": lock, "failover": fo, "list_cluster": lst}


def format_table(r: dict) -> str:
    f, lk, ls = r["failover"], r["lock"], r["list_cluster"]
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    n = f["failures"]
    return "\n".join([
        f"{'measure':<56} {'value':>14}  verdict",
        f"{'lock acquire on create, median / p95 (ms)':<56} {str(lk['median_ms']) + ' / ' + str(lk['p95_ms']):>14}",
        f"{'host death -> lease gone, median (s)':<56} {f['lease_gone_median_s']!s:>14}",
        f"{'host death -> QEMU started on a survivor, median (s)':<56} {f['qemu_median_s']!s:>14}",
        f"{'host death -> guest answering, median / max (s) <= 15':<56} "
        f"{str(f['answer_median_s']) + ' / ' + str(f['answer_max_s']):>14}  {ok(f['pass'])}",
        f"{'  kill -9 rounds / etcd-cut rounds, median (s)':<56} "
        f"{str(f['kill_answer_median_s']) + ' / ' + str(f['cut_answer_median_s']):>14}",
        f"{'double runs / missed restarts in ' + str(n) + ' failures':<56} "
        f"{str(f['double_runs']) + ' / ' + str(f['missed']):>14}  {ok(f['no_double_runs_pass'])}",
        f"{'xm list (' + str(ls['this_host_domains']) + ') / xm list --cluster (' + str(ls['rows']) + ' rows), ms':<56} "
        f"{str(ls['xm_list_ms']) + ' / ' + str(ls['xm_list_cluster_ms']):>14}",
        f"{'  ratio (target <= 1.5)':<56} {ls['ratio']!s:>14}  {ok(ls['pass'])}",
    ])
