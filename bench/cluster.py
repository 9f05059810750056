"""The cluster benchmark, at the store level: a three-member etcd (TLS, on
127.0.0.1), the foundation's membership leases and domain lock, and
pyxen.cluster.failover's election, with no guests.

* **lock acquire latency**: ``DomainLock.acquire`` (the create-time
  transaction: owner and name keys compared absent, on the lease) and its
  release, *runs* times; median and p95 in ms.
* **host failure**: *failures* rounds; in each, host A joins (the default
  lease TTL), takes the lock of a restart domain and then dies (its
  keep-alive stops, as when xend or the machine dies; the lease is left to
  expire).  Hosts B and C scan every 0.2 s with the default grace delay.
  Measured: A's death to the survivor winning ``claimed -> starting``, and
  how many hosts started the domain and took its lock (a double run is a
  round with more than one).  Guest boot is not in it: an estimate adds the
  median boot time from bench/results/boot.json, marked as such.
* **xm list --cluster cost**: what list --cluster adds to xm list with 3
  hosts × 30 domains: reading the member records and the other two hosts'
  listings from etcd, against the xm list latency bench/results/scale.json
  measured; the ratio is an estimate, since xend does not join the cluster
  yet (the foundation adds that).

Results: bench/results/cluster.json.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from pyxen import storekeys
from pyxen.cluster import failover as fo, view
from pyxen.cluster.lock import DomainLock
from pyxen.cluster.membership import Membership
from pyxen.config import sxp
from pyxen.config.domain import DomainConfig
from pyxen.testing import etcd as etcdtest

RESULTS = Path(__file__).resolve().parent / "results"
FAILURE_TARGET_S = 15.0
LIST_RATIO_TARGET = 1.5
SCAN_EVERY = 0.2


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


def one_failure(stores, uuid: str) -> dict:
    a = Membership(stores["a"], "a", info=lambda: {"free_memory": 512, "relocation": "a:8002"})
    a.join()
    survivors = {n: Membership(stores[n], n, info=lambda n=n: {"free_memory": 1024, "relocation": f"{n}:8002"})
                 for n in "bc"}
    for m in survivors.values():
        m.join()
    locks = {n: DomainLock(stores[n], m) for n, m in survivors.items()}
    cfg = DomainConfig.from_values({"name": "victim", "uuid": uuid, "kernel": "/k", "memory": 64,
                                    "on_host_failure": "restart"})
    st = stores["a"]
    st.put(storekeys.config(uuid), sxp.to_string(cfg.to_sxp()).encode())
    st.put_json(storekeys.runtime("a", uuid), {"domid": 1, "state": "running"})
    DomainLock(st, a).acquire(uuid, "victim")
    nodes = {n: fo.Failover(stores[n], n, lambda n=n: view.hosts(stores[n]), locks[n].owner,
                             parse=DomainConfig.from_sxp)
             for n in "bc"}
    started, locked = [], []
    stop = threading.Event()

    def scan(n):
        while not stop.is_set():
            for act in nodes[n].scan():
                if act.what == "start" and fo.mark(stores[n], uuid, act.claim, "starting"):
                    started.append((n, time.monotonic()))
                    try:
                        locks[n].acquire(uuid, "victim")
                        locked.append(n)
                    except Exception:
                        pass
            time.sleep(SCAN_EVERY)
    a.leave(revoke=False)          # death: no more keep-alives; etcd expires the lease
    died = time.monotonic()
    threads = [threading.Thread(target=scan, args=(n,)) for n in "bc"]
    for t in threads:
        t.start()
    deadline = died + 120
    while not started and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2)                  # let both keep scanning: a second start would show here
    stop.set()
    for t in threads:
        t.join(10)
    for m in survivors.values():
        m.leave(revoke=True)
    st.delete_prefix("")
    return {"seconds": round(started[0][1] - died, 2) if started else None,
            "starts": len(started), "locks": len(locked), "by": started[0][0] if started else None}


def list_cost(stores, runs: int = 20) -> dict:
    st = stores["a"]
    for n in "abc":
        st.put(storekeys.member(n), json.dumps({"name": n}).encode())
        rows = [{"name": f"{n}-dom{i}", "domid": i + 1, "memory": 32, "vcpus": 1, "state": "--p---",
                 "cpu_time": 0.1} for i in range(30)]
        view.ListingPublisher(st, n).publish(rows, 0)
    local = [{"name": f"a-dom{i}"} for i in range(30)]
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        out = view.cluster_domains(st, "a", local)
        ms.append((time.perf_counter() - t) * 1000)
    assert len(out) == 90
    st.delete_prefix("")
    extra = statistics.median(ms)
    xm_list = None
    try:
        xm_list = json.loads((RESULTS / "scale.json").read_text())["latency_ms"]["list_1"]
    except (OSError, ValueError, KeyError):
        pass
    ratio = round((xm_list + extra) / xm_list, 3) if xm_list else None
    return {"cluster_read_ms": round(extra, 2), "xm_list_ms_scale_json": xm_list, "estimated_ratio": ratio,
            "pass": ratio is not None and ratio <= LIST_RATIO_TARGET}


def run(failures: int = 20, lock_runs: int = 50, progress=print) -> dict:
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
        rounds = []
        for i in range(failures):
            r = one_failure(stores, f"11111111-0000-0000-0000-{i:012d}")
            progress(f"cluster: failure {i + 1}/{failures}: {r}")
            rounds.append(r)
        progress("cluster: list --cluster read cost")
        lst = list_cost(stores)
    finally:
        c.remove()
    secs = [r["seconds"] for r in rounds if r["seconds"] is not None]
    doubles = sum(1 for r in rounds if r["starts"] > 1 or r["locks"] > 1)
    missed = sum(1 for r in rounds if r["starts"] == 0)
    boot = None
    try:
        boot = json.loads((RESULTS / "boot.json").read_text())["summary"]["pyxen"]["median"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    med = round(statistics.median(secs), 2) if secs else None
    est = round(med + boot, 2) if med is not None and boot is not None else None
    return {"benchmark": "cluster", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": {"etcd_members": 3, "lease_ttl_s": Membership.__init__.__defaults__[0],
                       "grace_s": fo.DEFAULT_GRACE, "scan_every_s": SCAN_EVERY, "failures": failures},
            "lock": lock,
            "failover": {"rounds": rounds, "median_s": med, "max_s": max(secs) if secs else None,
                         "double_runs": doubles, "missed": missed, "boot_median_s": boot,
                         "estimated_to_guest_s": est,
                         "pass": doubles == 0 and missed == 0 and est is not None and est <= FAILURE_TARGET_S,
                         "no_double_runs_pass": doubles == 0 and missed == 0},
            "list_cluster": lst}


def format_table(r: dict) -> str:
    f, lk, ls = r["failover"], r["lock"], r["list_cluster"]
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    return "\n".join([
        f"{'measure':<52} {'value':>12}  verdict",
        f"{'lock acquire on create, median / p95 (ms)':<52} {lk['median_ms']:>6} / {lk['p95_ms']:<5}",
        f"{'host death -> restart begins, median / max (s)':<52} {f['median_s']!s:>5} / {f['max_s']!s:<6}",
        f"{'  + boot median (estimate, target <= 15 s)':<52} {f['estimated_to_guest_s']!s:>12}  {ok(f['pass'])}",
        f"{'double runs / missed restarts in ' + str(len(f['rounds'])) + ' failures':<52} "
        f"{str(f['double_runs']) + ' / ' + str(f['missed']):>12}  {ok(f['no_double_runs_pass'])}",
        f"{'list --cluster read, 3 x 30 (ms)':<52} {ls['cluster_read_ms']:>12}",
        f"{'  ratio to xm list (estimate, target <= 1.5)':<52} {ls['estimated_ratio']!s:>12}  {ok(ls['pass'])}",
    ])
