"""Tests for the pure parts of bench/scale.py: /proc parsing, the CPU and
memory arithmetic, the verdicts and the table.  Nothing here starts xend."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds bench/

from bench import scale  # noqa: E402

STAT = ("4242 (py thon) x) S 1 4242 4242 0 -1 4194560 9000 0 12 0 "
        "150 37 0 0 20 0 3 0 12345 123456789 12000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0")


def test_proc_stat_ticks_survives_a_command_name_with_spaces_and_parens():
    assert scale.proc_stat_ticks(STAT) == 150 + 37


def test_proc_stat_ticks_of_this_process():
    text = Path("/proc/self/stat").read_text()
    assert scale.proc_stat_ticks(text) >= 0


def test_status_and_meminfo_fields():
    assert scale.vm_rss_kib("Name:\tx\nVmPeak:\t 9 kB\nVmRSS:\t   50860 kB\n") == 50860
    assert scale.pss_kib("Rss: 60540 kB\nPss:               40424 kB\n") == 40424
    assert scale.mem_available_kib("MemTotal: 10 kB\nMemAvailable:   22000000 kB\n") == 22000000
    with pytest.raises(ValueError):
        scale.vm_rss_kib("Name: x\n")


def test_cpu_percent():
    assert scale.cpu_percent(30, 30.0, 100) == pytest.approx(1.0)
    assert scale.cpu_percent(0, 30.0, 100) == 0.0


def test_domain_budget_keeps_the_reserve():
    gib = 1024 * 1024
    # 10 GiB available, 4 GiB reserve, 40 MiB a domain: 153 more fit.
    assert scale.domain_budget(200, 1, 10 * gib, 40 * 1024, 4 * gib) == 1 + (6 * gib) // (40 * 1024)
    assert scale.domain_budget(200, 1, 20 * gib, 40 * 1024, 4 * gib) == 200
    # Already under the reserve: stop where we are, never below.
    assert scale.domain_budget(200, 7, 3 * gib, 40 * 1024, 4 * gib) == 7


def _result(n=200, **over):
    lat = {"pass": 20.0, "list_1": 30.0, "domid_1": 28.0, "list_100": 38.0, "domid_100": 30.0,
           f"list_{n}": 44.0, f"domid_{n}": 30.0}
    r = {"domains_reached": n, "latency_ms": lat,
         "config": {"accel": "tcg", "memory": 32},
         "host": {"loadavg_1min": 0.5},
         "rss": {"per_domain_mib": 0.6, "xend_0_kib": 48000, "xend_n_kib": 170000, "qemu_pss_kib": 40000},
         "idle": {"xend_cpu_percent": 0.2, "qemu_cpu_percent": 3.0},
         "restart": {"seconds": 4.0, "adopted": n},
         "create": {"per_second": 3.1}, "api_list_ms": {"1": 0.5, "200": 6.0}}
    r.update(over)
    return r


def test_compare_all_pass():
    c = scale.compare(_result())
    assert c["xm_list_100"] == {"value": 1.9, "target": 2.0, "pass": True}
    assert c["list_n_vs_1"]["value"] == pytest.approx(44 / 30, abs=0.01) and c["list_n_vs_1"]["pass"]
    assert all(row["pass"] for k, row in c.items() if k != "create_rate")
    assert c["create_rate"]["pass"] is None


def test_xm_ratios_use_the_pass_runs_of_the_same_point():
    r = _result()
    r["latency_ms"].update({"pass_100": 40.0, "pass_1": 10.0})   # the host got busier at 100
    c = scale.compare(r)
    assert c["xm_list_100"]["value"] == pytest.approx(38 / 40, abs=0.01)
    r["compare"] = c
    assert "0.95x its pass (40.0 ms)" in scale.format_table(r)


def test_compare_failures():
    r = _result(restart={"seconds": 4.0, "adopted": 199},
                idle={"xend_cpu_percent": 1.5, "qemu_cpu_percent": 0.0})
    r["latency_ms"]["domid_100"] = 41.0
    c = scale.compare(r)
    assert not c["restart"]["pass"]      # one domain lost on restart fails however fast
    assert not c["idle_cpu"]["pass"]
    assert not c["xm_domid"]["pass"]


def test_compare_short_of_200_cannot_pass_the_scale_rows():
    r = _result(n=60)
    del r["latency_ms"]["list_100"], r["latency_ms"]["domid_100"]
    c = scale.compare(r)
    assert not c["list_n_vs_1"]["pass"] and not c["xm_list_100"]["pass"]


def test_format_table_has_every_row_and_verdict():
    r = _result()
    r["compare"] = scale.compare(r)
    text = scale.format_table(r)
    for label in ("python -c pass", "xm list (100 domains)", "xm domid Domain-0 (1 domains)",
                  "xend RSS per domain", "xend CPU, all idle", "xend restart, re-adopt 200",
                  "create rate", "6.0 ms with 200"):
        assert label in text
    assert text.count("PASS") == 6 and "FAIL" not in text


def test_interpreter_of(tmp_path):
    f = tmp_path / "xm"
    f.write_text("#!/opt/venv/bin/python3 -s\nimport sys\n")
    assert scale.interpreter_of(str(f)) == "/opt/venv/bin/python3"
    f.write_text("import sys\n")
    with pytest.raises(ValueError):
        scale.interpreter_of(str(f))
