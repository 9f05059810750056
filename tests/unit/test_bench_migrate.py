"""The pure parts of bench/migrate.py: statistics, the verdicts and the
table.  Nothing here boots a VM or makes a namespace."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds bench/

from bench import migrate as mg  # noqa: E402

MIB = 1 << 20


def _pyxen(wall, seconds, downtime, qemu_downtime=3, mib=78):
    return {"wall_s": wall, "seconds": seconds, "bytes": mib * MIB, "downtime_ms": downtime,
            "qemu_downtime_ms": qemu_downtime, "qemu_total_ms": 200, "passes": 2}


def _raw(total_ms, downtime=20, visible=25, wall=None, mib=78):
    return {"wall_s": wall or total_ms / 1000, "target_start_s": 0.1, "total_ms": total_ms, "downtime_ms": downtime,
            "visible_downtime_ms": visible, "bytes": mib * MIB, "passes": 2}


def test_summarize_medians_and_units():
    s = mg.summarize([_pyxen(0.5, 0.4, 40), _pyxen(0.3, 0.25, 60), _pyxen(0.4, 0.3, 20)],
                     [_raw(300), _raw(100, visible=None)])
    assert s["pyxen"]["wall_s"] == {"median": 0.4, "min": 0.3, "max": 0.5, "n": 3}
    assert s["pyxen"]["downtime_ms"]["median"] == 40
    assert s["pyxen"]["mib"]["median"] == 78
    assert s["raw"]["total_s"] == {"median": 0.2, "min": 0.1, "max": 0.3, "n": 2}
    assert s["raw"]["downtime_ms"]["n"] == 1                 # a missing figure is left out
    with pytest.raises(ValueError):
        mg.summarize([], [_raw(100)])


def test_summarize_without_xend_result():
    # If the event carrying xend's result was missed, its figures are absent, not zero.
    s = mg.summarize([{"wall_s": 0.5, "bytes": None}], [_raw(100)])
    assert s["pyxen"]["xend_s"] is None and s["pyxen"]["downtime_ms"] is None
    c = mg.compare(s, "idle")
    assert c["xend_ratio"] is None and c["downtime_pass"] is False and c["pass"] is False


def test_compare_ratio_and_downtime():
    six = [_pyxen(0.24, 0.2, d) for d in (20, 22, 25, 25, 30, 40)]
    c = mg.compare(mg.summarize(six, [_raw(200)]), "idle")
    assert c == {"ratio": 1.2, "xend_ratio": 1.0, "target_ratio": 1.2, "ratio_pass": True,
                 "target_downtime_ms": 25, "max_downtime_ms": 40, "downtime_runs": 6,
                 "downtime_pass": True, "pass": True}
    # The median over 25 ms, one run over 40 ms, or fewer than 6 runs: FAIL.
    for runs in ([_pyxen(0.24, 0.2, d) for d in (20, 22, 26, 26, 30, 40)],
                 [_pyxen(0.24, 0.2, d) for d in (20, 22, 25, 25, 30, 41)], six[:5]):
        c = mg.compare(mg.summarize(runs, [_raw(200)]), "idle")
        assert c["downtime_pass"] is False and c["pass"] is False
    # Downtime is only judged for idle guests.
    c = mg.compare(mg.summarize([_pyxen(0.5, 0.45, 500)], [_raw(200)]), "dirty")
    assert "downtime_pass" not in c and c["ratio"] == 2.5 and c["pass"] is False


def test_table():
    samples = {"256-idle": ([_pyxen(0.5, 0.4, 82), _pyxen(0.4, 0.3, 55)], [_raw(270), _raw(90)]),
               "1024-dirty": ([_pyxen(1.0, 0.9, 120, mib=195)], [_raw(900, mib=263)])}
    summary = {k: mg.summarize(*v) for k, v in samples.items()}
    result = {"config": {"accel": "tcg", "runs": {"idle": 2, "dirty": 1}},
              "cases": list(samples), "summary": summary,
              "compare": {k: mg.compare(v, k.split("-")[1]) for k, v in summary.items()}}
    lines = mg.format_table(result).splitlines()
    assert lines[0] == "live migration (TCG, TLS, two netns over veth; runs: idle 2, dirty 1)"
    assert lines[1].split() == ["median", "min", "max"]
    assert lines[2] == "256 MiB guest, idle"
    assert lines[3].startswith("  raw qemu: total-time") and lines[3].split()[-4:] == ["0.18", "0.09", "0.27", "s"]
    assert lines[4].startswith("  raw qemu: target start + migrate")
    assert lines[4].split()[-4:] == ["0.28", "0.19", "0.37", "s"]
    assert lines[8].startswith("  pyxen: xm migrate --live") and lines[8].split()[-4:] == ["0.45", "0.40", "0.50", "s"]
    assert lines[10].split()[-4:] == ["68", "55", "82", "ms"]
    assert lines[13] == ("  ratio 2.50 (xend's 1.94) -> target (<= 1.2x): FAIL; "
                         "downtime -> target (median <= 25 ms, none above 40 ms, 2 runs): FAIL")
    assert lines[14] == "1024 MiB guest, dirty"
    assert lines[-1] == "  ratio 1.11 (xend's 1.00) -> target (<= 1.2x): PASS"
    # the numbers line up in columns
    rows = [ln for ln in lines if ln.endswith((" s", " ms", " MiB"))]
    assert len(rows) == 20 and len({len(ln.rsplit(" ", 1)[0]) for ln in rows}) == 1
