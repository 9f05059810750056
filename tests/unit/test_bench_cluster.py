"""The pure parts of bench/cluster.py: the percentile and the table's verdicts."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds bench/

from bench import cluster as bc  # noqa: E402


def test_pct():
    assert bc.pct([5, 1, 3, 2, 4], 50) == 3
    assert bc.pct([5, 1, 3, 2, 4], 95) == 5
    assert bc.pct([7], 95) == 7


def test_table_verdicts():
    r = {"lock": {"median_ms": 13.1, "p95_ms": 27.8},
         "failover": {"rounds": [{}] * 20, "median_s": 13.5, "max_s": 14.7, "estimated_to_guest_s": 16.2,
                      "pass": False, "double_runs": 0, "missed": 0, "no_double_runs_pass": True},
         "list_cluster": {"cluster_read_ms": 29.1, "estimated_ratio": 1.12, "pass": True}}
    t = bc.format_table(r).splitlines()
    assert t[3].endswith("16.2  FAIL") and "estimate" in t[3]
    assert "in 20 failures" in t[4] and t[4].endswith("0 / 0  PASS")
    assert t[6].endswith("1.12  PASS")
