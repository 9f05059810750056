"""xend-config.sxp options: every option the table says acts is read by
some module; misspelt and inert ones are reported; `xend check-config`'s
checks."""

from __future__ import annotations

import re
from pathlib import Path

from pyxen.config.xendconfig import OPTIONS, XendConfig
from pyxen.paths import Paths
from pyxen.xend import startcheck

PKG = Path(__file__).resolve().parents[2] / "pyxen"


def test_every_acting_option_is_read_somewhere():
    sources = [p for p in PKG.rglob("*.py") if p.name != "xendconfig.py"]
    text = "\n".join(p.read_text() for p in sources)
    unread = [o.name for o in OPTIONS if o.origin != "inert"
              and not re.search(r"""["']%s["']""" % re.escape(o.name), text)]
    assert not unread, f"options marked as acting that no module reads (mark them inert): {unread}"


def test_the_manuals_inert_options_are_marked():
    by = {o.name: o for o in OPTIONS}
    for name in ("xend-unix-server",):
        assert by[name].origin == "inert", name
    for name in ("vnc-tls", "vnc-x509-cert-dir", "vnc-x509-verify"):       # implemented (xend/vnctls.py)
        assert by[name].origin != "inert", name


def test_misspelt_option_names_the_nearest():
    cfg = XendConfig.parse("(xend-relocation-sever yes)\n(frobnicate 1)\n")
    w = cfg.warnings()
    assert any("(xend-relocation-sever ...)" in x and "did you mean (xend-relocation-server ...)" in x for x in w), w
    assert any("(frobnicate ...)" in x and "did you mean" not in x for x in w), w


def test_inert_option_set_is_a_warning():
    w = XendConfig.parse("(xend-unix-server no)\n(vnc-tls 1)\n").warnings()
    assert any("(xend-unix-server no)" in x and "no effect" in x for x in w), w
    assert not any("vnc-tls" in x for x in w), w
    assert XendConfig.parse("(vnc-tls no)\n(enable-dump yes)\n").warnings() == []


def _paths(tmp_path, text: str) -> Paths:
    (tmp_path / "etc/xen").mkdir(parents=True)
    (tmp_path / "etc/xen/xend-config.sxp").write_text(text)
    return Paths(tmp_path)


def test_check_missing_network_script_is_an_error(tmp_path):
    errors, _, _ = startcheck.check(_paths(tmp_path, "(network-script network-nosuch)\n"))
    assert len(errors) == 1 and "network-nosuch" in errors[0] and "not found" in errors[0]


def test_check_shipped_script_not_yet_laid_out_is_fine(tmp_path):
    errors, warnings, _ = startcheck.check(_paths(tmp_path, "(network-script network-vnet)\n"))
    assert errors == [] and warnings == []


def test_check_relocation_without_certificates(tmp_path):
    errors, _, _ = startcheck.check(_paths(tmp_path, "(xend-relocation-server yes)\n"))
    assert len(errors) == 1 and errors[0].startswith("relocation server:")
    errors, _, _ = startcheck.check(_paths(tmp_path.joinpath("b"), "(xend-relocation-server yes)\n"
                                                                  "(xend-relocation-tls no)\n"))
    assert errors == []


def test_check_bad_sxp(tmp_path):
    errors, _, cfg = startcheck.check(_paths(tmp_path, "(logfile /tmp/x\n"))
    assert cfg is None and len(errors) == 1 and "xend-config.sxp" in errors[0]


def test_accel_verdict_key_follows_qemu_binary_and_cpu(tmp_path):
    from pyxen.hypervisor.qemu import accel
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 7.2.0'\n")
    fake.chmod(0o755)
    k1 = accel.cache_key(str(fake))
    assert k1["qemu"] == "7.2.0" and k1["cpu"] != "unknown" and str(fake) in k1["qemu_binary"]
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 7.2.0'\n# rebuilt\n")
    assert accel.cache_key(str(fake))["qemu_binary"] != k1["qemu_binary"]   # same version, new binary
