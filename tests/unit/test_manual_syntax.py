"""The manual's own syntax: accepted as Xen accepted it, or refused with
one line; never dropped without a word."""

from __future__ import annotations

import pytest

from pyxen.config.domain import DomainConfig
from pyxen.config.errors import ConfigError

K = "/var/lib/pyxen/images/default/vmlinuz"


def test_dev_vif_of_appendix_b():
    cfg = DomainConfig.from_sxp(f"(vm (name vn) (image (linux (kernel {K})))"
                                "(dev (vif (mac aa:00:00:01:02:03) (bridge vnet97))))")
    assert [(v["mac"], v["bridge"]) for v in cfg.vifs] == [("aa:00:00:01:02:03", "vnet97")]
    assert cfg.to_sxp()[-1][0] == "device"


def test_unknown_list_fields_are_refused():
    with pytest.raises(ConfigError, match=r"\(frob \(x \.\.\.\)\): not a field"):
        DomainConfig.from_sxp(f"(vm (name a) (image (linux (kernel {K}))) (frob (x 1)))")
    with pytest.raises(ConfigError, match="unknown device type"):
        DomainConfig.from_sxp(f"(vm (name a) (image (linux (kernel {K}))) (device (vfoo (a 1))))")


def test_audio_is_an_sb16_on_hvm_and_refused_on_pv():
    cfg = DomainConfig.from_values({"name": "a", "builder": "hvm", "kernel": "/usr/lib/xen/boot/hvmloader",
                                    "audio": 1})
    assert cfg.hvm["soundhw"] == "sb16"
    cfg = DomainConfig.from_values({"name": "a", "builder": "hvm", "kernel": "/usr/lib/xen/boot/hvmloader",
                                    "audio": 1, "soundhw": "ac97"})
    assert cfg.hvm["soundhw"] == "ac97"
    with pytest.raises(ConfigError, match="audio: sound cards need an HVM domain"):
        DomainConfig.from_values({"name": "a", "kernel": K, "audio": 1})
