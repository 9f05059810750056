"""The pure parts of bench/saverestore.py: throughput statistics, the
verdict and the table.  Nothing here boots a VM."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds bench/

from bench import saverestore as sr  # noqa: E402


def test_summarize_is_throughput():
    s = sr.summarize([(100_000_000, 1.0), (100_000_000, 0.5), (100_000_000, 0.25)])
    assert s == {"median": 200.0, "min": 100.0, "max": 400.0, "n": 3, "seconds_median": 0.5}
    with pytest.raises(ValueError):
        sr.summarize([])


def _summary(save, raw_save, restore, raw_load, dd_write=(1.0,), dd_read=(1.0,)):
    out = {}
    for side, secs in (("save", save), ("dd_write", dd_write), ("restore", restore),
                       ("dd_read", dd_read), ("raw_save", raw_save), ("raw_load", raw_load)):
        out[side] = sr.summarize([(800_000_000, s) for s in secs])
    return out


def test_compare_is_against_raw_qemu_and_needs_both_ratios():
    assert sr.compare(_summary([1.0], [0.9], [1.0], [0.9], [0.5], [0.25])) == {
        "save_ratio": 0.9, "restore_ratio": 0.9, "target": 0.9, "pass": True,
        "dd_save_ratio": 0.5, "dd_restore_ratio": 0.25}
    c = sr.compare(_summary([1.0], [0.9], [1.0], [0.5]))
    assert c["restore_ratio"] == 0.5 and c["pass"] is False
    assert sr.compare(_summary([0.5], [1.0], [1.0], [1.0]))["save_ratio"] == 2.0


def test_table():
    summary = {"256": _summary([0.4, 0.5], [0.2, 0.2], [0.5], [0.25]),
               "1024": _summary([1.0], [1.0], [1.0], [0.9])}
    result = {"config": {"accel": "tcg", "runs": 2, "sizes": [256, 1024]},
              "bytes": {"256": 226_000_000, "1024": 809_000_000},
              "summary": summary, "compare": {k: sr.compare(v) for k, v in summary.items()}}
    lines = sr.format_table(result).splitlines()
    assert lines[0].startswith("save/restore (TCG, 2 runs;")
    assert lines[2] == "256 MiB guest, 226 MB save file"
    assert lines[3].startswith("  xm save") and lines[3].split()[-5:] == ["1800", "1600", "2000", "0.45", "s"]
    assert lines[9] == "  vs raw QEMU: save ratio 0.45, restore ratio 0.50  -> target (>= 0.9): FAIL"
    assert lines[10] == "  vs dd (for information): save 2.25, restore 2.00"
    assert lines[-2] == "  vs raw QEMU: save ratio 1.00, restore ratio 0.90  -> target (>= 0.9): PASS"
    # the numbers line up in columns
    assert len({line.index(" s", 30) for line in lines if line.endswith(" s")}) == 1
