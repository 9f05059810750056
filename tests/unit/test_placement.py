"""Placement: the host with the most free memory that fits; a refusal names
every host considered and why it was unfit."""

import pytest

from pyxen.cluster.placement import HostInfo, Needs, PlacementError, choose, needs_of, unfit
from pyxen.config.domain import DomainConfig


def hosts():
    return [
        HostInfo("a", free_memory=512, bridges=frozenset({"xenbr0"})),
        HostInfo("b", free_memory=2048, bridges=frozenset({"xenbr0", "xenbr1"})),
        HostInfo("c", free_memory=1024, bridges=frozenset({"xenbr0", "xenbr1"})),
    ]


def test_most_free_memory_wins():
    assert choose(hosts(), Needs(256)).host.name == "b"


def test_ties_go_to_fewer_domains_then_name():
    hs = [HostInfo("z", free_memory=1000, domains=3), HostInfo("y", free_memory=1000, domains=1),
          HostInfo("x", free_memory=1000, domains=1)]
    assert choose(hs, Needs(10)).host.name == "x"
    assert choose(list(reversed(hs)), Needs(10)).host.name == "x"      # order of the input does not matter


def test_skips_unfit_and_says_why():
    hs = hosts()
    hs[1] = HostInfo("b", state="down", free_memory=4096)
    c = choose(hs, Needs(256, bridges=frozenset({"xenbr1"})))
    assert c.host.name == "c" and c.skipped == {"b": "host is down"}


def test_refusal_lists_every_host_and_reason():
    hs = hosts()
    hs[1] = HostInfo("b", state="fenced", free_memory=4096)
    hs[2] = HostInfo("c", free_memory=1024, bridges=frozenset({"xenbr0"}))
    hs.append(HostInfo("d", free_memory=8192, bridges=frozenset({"xenbr1"}),
                       missing=frozenset({"/srv/img/web.img"})))
    with pytest.raises(PlacementError) as e:
        choose(hs, Needs(1000, bridges=frozenset({"xenbr1"}), paths=frozenset({"/srv/img/web.img"}),
                         name="web"))
    assert e.value.reasons == {
        "a": "512 MiB free, needs 1000 MiB",
        "b": "host is fenced",
        "c": "no bridge xenbr1",
        "d": "no /srv/img/web.img",
    }
    msg = str(e.value)
    assert msg.startswith("no host can run domain web: a: 512 MiB free, needs 1000 MiB; b: host is fenced")
    assert "\n" not in msg and "d: no /srv/img/web.img" in msg


def test_bridge_missing_is_named():
    assert unfit(hosts()[0], Needs(1, bridges=frozenset({"xenbr1", "xenbr9"}))) == "no bridge xenbr1, xenbr9"


def test_unknown_paths_are_unfit():
    h = HostInfo("q", free_memory=9999, missing=None)
    assert unfit(h, Needs(1, paths=frozenset({"/k"}))) == "did not report its disks and kernel"


def test_named_host_must_fit_and_no_other_is_tried():
    assert choose(hosts(), Needs(256), only="a").host.name == "a"
    with pytest.raises(PlacementError) as e:
        choose(hosts(), Needs(600), only="a")
    assert e.value.reasons == {"a": "512 MiB free, needs 600 MiB"}
    with pytest.raises(PlacementError) as e:
        choose(hosts(), Needs(1), only="nosuch")
    assert "nosuch: not a member of the cluster (members: a, b, c)" in str(e.value)


def test_exclude():
    assert choose(hosts(), Needs(256), exclude=("b",)).host.name == "c"
    with pytest.raises(PlacementError) as e:
        choose([], Needs(1))
    assert str(e.value) == "no host can run the domain: no hosts in the cluster"


def test_needs_of_config():
    cfg = DomainConfig.from_values({
        "name": "web", "memory": 300, "kernel": "/boot/vmlinuz", "ramdisk": "/boot/initrd",
        "disk": ["file:/srv/web.img,xvda,w", "phy:/dev/vg/data,xvdb,r"],
        "vif": ["bridge=xenbr1", "mac=00:16:3e:00:00:01"]})
    n = needs_of(cfg)
    assert n.memory == 300 and n.name == "web"
    assert n.bridges == {"xenbr1"}
    assert n.paths == {"/boot/vmlinuz", "/boot/initrd", "/srv/web.img", "/dev/vg/data"}


def test_on_host_failure_option():
    base = {"name": "g", "kernel": "/k"}
    assert DomainConfig.from_values(base).on_host_failure == "preserve"
    cfg = DomainConfig.from_values(dict(base, on_host_failure="restart"))
    assert cfg.on_host_failure == "restart"
    assert ["on_host_failure", "restart"] in cfg.to_sxp()
    assert DomainConfig.from_sxp(cfg.to_sxp()).on_host_failure == "restart"
    assert not any(i[0] == "on_host_failure" for i in DomainConfig.from_values(base).to_sxp() if isinstance(i, list))
    from pyxen.config.errors import ConfigError
    with pytest.raises(ConfigError, match="on_host_failure: expected one of restart, preserve, got 'reboot'"):
        DomainConfig.from_values(dict(base, on_host_failure="reboot"))
