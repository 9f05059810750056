"""The pure parts of bench/cluster.py and bench/clusterfail.py: the
percentile, the failure rounds' summary and the table's verdicts."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds bench/

from bench import cluster as bc  # noqa: E402
from bench import clusterfail as cf  # noqa: E402


def test_pct():
    assert bc.pct([5, 1, 3, 2, 4], 50) == 3
    assert bc.pct([5, 1, 3, 2, 4], 95) == 5
    assert bc.pct([7], 95) == 7


def rnd(mode, answer, double=False, **kw):
    return {"mode": mode, "answer_s": answer, "lease_gone_s": 7.0, "qemu_s": 9.0, "init_s": 11.0,
            "double_run": double, **kw}


def test_summary_counts_double_runs_misses_and_errors():
    s = cf.summarize([rnd("kill", 12.0), rnd("cut", 14.0, double=True), rnd("kill", None),
                      {"mode": "cut", "error": "timed out", "answer_s": None, "double_run": False}])
    assert s["failures"] == 4 and s["double_runs"] == 1 and s["missed"] == 2
    assert s["answer_median_s"] == 13.0 and s["answer_max_s"] == 14.0
    assert s["kill_answer_median_s"] == 12.0 and s["cut_answer_median_s"] == 14.0
    assert s["errors"] == ["timed out"]


def test_table_verdicts():
    fo = cf.summarize([rnd("kill", 12.5), rnd("cut", 13.5)])
    fo.update({"pass": True, "no_double_runs_pass": True})
    r = {"lock": {"median_ms": 13.1, "p95_ms": 27.8}, "failover": fo,
         "list_cluster": {"this_host_domains": 30, "rows": 93, "xm_list_ms": 300.0, "xm_list_cluster_ms": 330.0,
                          "ratio": 1.1, "pass": True}}
    t = bc.format_table(r).splitlines()
    assert "guest answering" in t[4] and t[4].endswith("13.0 / 13.5  PASS")
    assert "in 2 failures" in t[6] and t[6].endswith("0 / 0  PASS")
    assert "xm list (30) / xm list --cluster (93 rows)" in t[7]
    assert t[8].endswith("1.1  PASS")


def test_a_qemu_is_found_by_its_uuid_and_root(tmp_path):
    # No QEMU of this uuid runs: nothing is found (the sampler's base case).
    assert cf.running_on("00000000-0000-0000-0000-000000000000", {"a": tmp_path}) == set()
