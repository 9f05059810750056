"""Bounded atheris runs of every fuzz target (tests/fuzz/targets.py), each
in its own process: any input that raises something other than the
parser's clean error, or hangs, fails the run.  ``make fuzz`` runs the
same targets for long, keeping a corpus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TARGETS = Path(__file__).resolve().parents[1] / "fuzz" / "targets.py"
# Inputs per target per `make test`: a few seconds each on this machine.
RUNS = {"sxp": 5000, "xl": 3000, "domconfig": 3000, "specs": 5000, "xendconfig": 3000, "savefile": 3000,
        "api": 2000, "relocation": 3000}


@pytest.mark.parametrize("target", sorted(RUNS))
def test_fuzz_target(target, tmp_path):
    res = subprocess.run([sys.executable, str(TARGETS), target, f"-runs={RUNS[target]}", "-timeout=20",
                          f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=dict(os.environ, TMPDIR=str(tmp_path)))
    out = res.stdout + res.stderr
    crash = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-"))]
    assert res.returncode == 0 and not crash, out[-4000:]
    assert f"Done {RUNS[target]} runs" in out, out[-2000:]


# Inputs the fuzzers found, kept as plain regression tests.
@pytest.mark.parametrize("text", ["z=8\nz=-4,-2,-2,-8" + "{" * 200,     # MemoryError from CPython's parser
                                  "x = {[1]}"])                          # TypeError from literal_eval
def test_fuzz_findings_xl(text, tmp_path):
    from pyxen.config import xmconfig
    from pyxen.config.errors import ConfigError
    with pytest.raises(ConfigError, match="while processing f.cfg"):
        xmconfig.parse_xl(text, "f.cfg")
    cfg = tmp_path / "f.cfg"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="while processing"):
        xmconfig.evaluate(cfg, {}, {})


def test_fuzz_findings_disk_number():
    # Was a ValueError: '⒊'.isdigit() is True but int() refuses it.
    from pyxen.config.errors import ConfigError
    from pyxen.config.specs import disk_number
    for bad in ("⒊", "xvda٣"):
        with pytest.raises(ConfigError, match="bad virtual device"):
            disk_number(bad)
    assert disk_number("51712") == 51712 and disk_number("xvda1") == disk_number("51713")


def test_fuzz_findings_cpus():
    # Was a hang (a set of 6e27 CPU numbers); xend's vcpu-pin parses the same.
    from pyxen.config.errors import ConfigError
    from pyxen.config.specs import parse_cpuset
    with pytest.raises(ConfigError, match="out of range 0-4095"):
        parse_cpuset(",7,30-5999999999999999999999999999")
    assert parse_cpuset("4090-4095") == set(range(4090, 4096))
