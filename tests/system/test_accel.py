"""(accel auto): KVM is proven by a probe boot, else TCG; the verdict is cached."""

from __future__ import annotations

import time

from pyxen import storekeys
from pyxen.testing import state


def test_auto_probe_decides_caches_and_boots(make_host):
    h = make_host("(accel auto)\n(accel-probe-timeout 8)\n")
    info = dict(line.split(":", 1) for line in h.xm("info").stdout.splitlines())
    info = {k.strip(): v.strip() for k, v in info.items()}
    verdict = info["accelerator"]
    assert verdict in ("kvm", "tcg")
    assert info["accelerator_detail"] not in ("", "(none)")
    cached = state.get_json(h.root, storekeys.accel_probe)
    assert cached["verdict"] == verdict

    # The domain runs with the verdict.
    h.xm("create", str(h.config("acc")))
    pid = h.qemu_pids()[0]
    argv = open(f"/proc/{pid}/cmdline").read().split("\0")
    assert argv[argv.index("-accel") + 1].split(",")[0] == verdict
    with h.console("acc") as con:
        con.login()
        out, rc = con.run("echo alive")
        assert (out, rc) == ("alive\n", 0)

    # A restarted xend reuses the verdict instead of probing again.
    h.xend("restart")
    t0 = time.monotonic()
    info2 = h.xm("info").stdout
    assert time.monotonic() - t0 < 5
    assert f"accelerator            : {verdict}" in info2
    assert "probed earlier" in info2
