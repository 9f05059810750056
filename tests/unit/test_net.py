"""Virtual networks without a guest: vif specs, rates, MACs, the QEMU NIC
arguments, network-list layouts, vnet configs and the script plumbing."""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
from pathlib import Path

import pytest

from pyxen.config import sxp
from pyxen.config.domain import DomainConfig
from pyxen.config.errors import ConfigError
from pyxen.config.specs import parse_rate, parse_vif, vif_model
from pyxen.hypervisor.qemu import argv as qargv
from pyxen.net import mac, scripts
from pyxen.net.vnet import VnetConfig, VnetError
from pyxen.xm import format as fmt


# ------------------------------------------------------------------ vif specs
def test_vif_keys_and_values():
    assert parse_vif(" type=ioemu, mac=00:16:3E:00:00:11 , bridge=xenbr1, ip=10.0.0.1 10.0.1.0/24,"
                     " script=vif-nat, vifname=web0, rate=10Mb/s@20ms, model=e1000, backend=0") == {
        "type": "ioemu", "mac": "00:16:3E:00:00:11", "bridge": "xenbr1", "ip": "10.0.0.1 10.0.1.0/24",
        "script": "vif-nat", "vifname": "web0", "rate": "10Mb/s@20ms", "model": "e1000", "backend": "0"}
    assert parse_vif("") == {} and parse_vif(",,") == {}


@pytest.mark.parametrize("entry, needle", [
    ("mac=00:16:3e:00:00", "bad mac"),
    ("mac=01:00:5e:00:00:01", "multicast"),
    ("ip=10.0.0.256", "bad ip '10.0.0.256'"),
    ("ip=fe80::1", "IPv4"),
    ("rate=10 Mb/s", "bad rate"),
    ("rate=10Xb/s", "bad rate"),
    ("rate=0Mb/s", "more than zero"),
    ("vifname=way-too-long-vifname", "bad vifname"),
    ("vifname=a,b", "should be a pair"),
    ("bridge=br/0", "bad bridge"),
    ("model=3c59x", "unknown model '3c59x'"),
    ("type=wifi", "bad type"),
    ("backend=2", "only Domain-0"),
    ("colour=red", "Invalid vif option: colour"),
])
def test_bad_vif_values_name_the_entry(entry, needle):
    with pytest.raises(ConfigError) as e:
        parse_vif(entry)
    assert str(e.value).startswith(f"Invalid vif specifier {entry!r}: ") and needle in str(e.value)


def test_rates_follow_xen():
    assert parse_rate("10Mb/s") == (1_250_000, 50_000)        # bits, 1000s, 50 ms default
    assert parse_rate("1MB/s@20ms") == (1_000_000, 20_000)
    assert parse_rate("100KB/s@500us") == (100_000, 500)
    assert parse_rate("2Gb/s@1s") == (250_000_000, 1_000_000)
    assert parse_rate("800b/s") == (100, 50_000)


def test_nic_models():
    assert vif_model({}) == "virtio-net-pci"
    assert vif_model({"type": "ioemu"}, hvm=True) == "rtl8139"
    assert vif_model({"model": "e1000"}, hvm=True) == "e1000"
    assert vif_model({"model": "virtio"}) == "virtio-net-pci"


def test_vifs_round_trip_through_sxp():
    cfg = DomainConfig.from_values({"name": "n", "kernel": "/k",
                                    "vif": ["mac=00:16:3e:01:02:03, ip=10.0.0.1 10.0.0.2, rate=1MB/s", ""]})
    assert DomainConfig.from_sxp(cfg.to_sxp()) == cfg
    assert cfg.vifs[1] == {}


# ----------------------------------------------------------------------- MACs
def test_random_macs_are_xen_macs_and_unique():
    rng = random.Random(5)
    seen = {mac.random_mac(rng) for _ in range(2000)}
    assert all(re.fullmatch(r"00:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}", m) for m in seen)
    used = {"00:16:3E:00:00:01"}
    m = mac.allocate(used, random.Random(1))
    assert m not in {"00:16:3e:00:00:01"} and m.startswith("00:16:3e:")


def test_allocate_skips_every_used_mac():
    class Fixed(random.Random):
        calls = 0

        def randint(self, a, b):      # the first MAC drawn repeats; allocate must move on
            Fixed.calls += 1
            return 0 if Fixed.calls <= 3 else 1
    assert mac.allocate({"00:16:3e:00:00:00"}, Fixed()) == "00:16:3e:01:01:01"


# ---------------------------------------------------------------- QEMU argv
def test_nic_arguments_in_vif_order():
    cfg = DomainConfig.from_values({"name": "n", "kernel": "/k", "vif": [
        "mac=00:16:3e:00:00:01", "mac=00:16:3e:00:00:02, model=ne2k_pci"]})
    rt = qargv.Runtime(3, Path("/r"), Path("/l"), "tcg", nics=[(0, "vif3.0", 1500), (2, "web", 1450)])
    a = qargv.build(cfg, rt)
    i = a.index("-netdev")
    assert a[i:i + 8] == [
        "-netdev", "tap,id=vif0,ifname=vif3.0,script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=vif0,mac=00:16:3e:00:00:01,id=nic0,romfile=",
        "-netdev", "tap,id=vif2,ifname=web,script=no,downscript=no",
        "-device", "ne2k_pci,netdev=vif2,mac=00:16:3e:00:00:02,id=nic2,romfile="]
    # A smaller MTU on the host side is passed to a virtio guest.
    assert qargv.nic_props(0, {"mac": "00:16:3e:00:00:01"}, mtu=1450)["host_mtu"] == 1450
    assert "host_mtu" not in qargv.nic_props(0, {"mac": "00:16:3e:00:00:01"}, mtu=1500)


# ------------------------------------------------------------------- layouts
def _vif(**kw):
    d = {"idx": 0, "backend-id": 0, "mac": "00:16:3e:12:34:56", "handle": 0, "state": 4, "event-ch": -1,
         "tx-ring-ref": -1, "rx-ring-ref": -1, "be-path": "/local/domain/0/backend/vif/5/0",
         "vifname": "vif5.0", "config": {"mac": "00:16:3e:12:34:56", "bridge": "xenbr0"}}
    d.update(kw)
    return d


def test_network_list_layout_exact():
    assert fmt.NETWORK_HEADER == "Idx BE     MAC Addr.     handle state evt-ch tx-/rx-ring-ref BE-path"
    assert fmt.network_row(_vif()) == \
        "0   0  00:16:3e:12:34:56    0     4      -1    -1   /-1      /local/domain/0/backend/vif/5/0  "
    assert fmt.network_row(_vif(**{"idx": 12, "handle": 12, "event-ch": 9, "tx-ring-ref": 768,
                                    "rx-ring-ref": 769})).startswith(
        "12  0  00:16:3e:12:34:56    12    4      9     768  /769     ")


def test_network_list_long_is_sxp():
    assert fmt.network_long(_vif()) == (
        "(0\n    (vif\n        (backend-id 0)\n        (mac 00:16:3e:12:34:56)\n        (handle 0)\n"
        "        (state 4)\n        (backend /local/domain/0/backend/vif/5/0)\n"
        "        (tx-ring-ref -1)\n        (rx-ring-ref -1)\n        (event-channel -1)\n"
        "        (vifname vif5.0)\n        (bridge xenbr0)\n    )\n)\n")


# ---------------------------------------------------------------------- vnets
def test_vnet_config_defaults_and_manual_example():
    v = VnetConfig.parse("(vnet (id 97) (bridge vnet97) (vnetif vnif97)\n(security none))")
    assert (v.id, v.bridge, v.vnetif, v.security) == (97, "vnet97", "vnif97", "none")
    v = VnetConfig.parse("(vnet (id 0x10))")
    assert (v.id, v.bridge, v.vnetif) == (16, "vnet16", "vnetif16")
    assert VnetConfig.parse(sxp.to_string(v.to_sxp())) == v


@pytest.mark.parametrize("text, needle", [
    ("(vnet (bridge b))", "(id N) is required"),
    ("(vnet (id 0))", "out of range"),
    ("(vnet (id 16777216))", "out of range"),
    ("(vnet (id x1))", "not a number"),
    ("(vnet (id 5) (security auth))", "security 'auth' is not available"),
    ("(vnet (id 5) (colour red))", "unknown field (colour ...)"),
    ("(vnet (id 5) (bridge a b))", "(bridge ...) needs one value"),
    ("(vnet (id 5) (bridge same) (vnetif same))", "must differ"),
    ("(vnet (id 5) (vnetif this-name-is-too-long))", "bad vnetif"),
    ("(vnet (id 5)) (vnet (id 6))", "expected one"),
    ("(vnet (id 5)", "file.sxp"),
])
def test_bad_vnet_configs(text, needle):
    with pytest.raises(VnetError, match=re.escape(needle)):
        VnetConfig.parse(text, "file.sxp")


# -------------------------------------------------------------------- scripts
SHIPPED = Path(scripts.__file__).resolve().parents[1] / "data" / "scripts"


def test_shipped_scripts_are_valid_sh():
    for name in scripts.BUILTIN:
        res = subprocess.run(["sh", "-n", str(SHIPPED / name)], capture_output=True, text=True)
        assert res.returncode == 0, (name, res.stderr)
        assert scripts.MARKER in (SHIPPED / name).read_text()


def test_install_upgrades_only_untouched_scripts(tmp_path):
    assert set(scripts.install(tmp_path)) == set(scripts.BUILTIN)
    assert (tmp_path / "vif-bridge").stat().st_mode & 0o111
    assert scripts.install(tmp_path) == []
    (tmp_path / "vif-bridge").write_text("# pyxen-managed\nold version\n")       # an older pyxen's
    (tmp_path / "vif-nat").write_text("#!/bin/sh\n# my site's own vif-nat\n")    # an administrator's
    assert scripts.install(tmp_path) == ["vif-bridge"]
    assert (tmp_path / "vif-nat").read_text().endswith("own vif-nat\n")


def test_script_settings_and_lookup(tmp_path):
    assert scripts.split("network-bridge netdev=eth1 bridge=xenbr0") == \
        ("network-bridge", ["netdev=eth1", "bridge=xenbr0"])
    with pytest.raises(scripts.ScriptError, match="expected name=value"):
        scripts.split("network-bridge eth1")
    scripts.install(tmp_path)
    assert scripts.resolve("vif-bridge", tmp_path) == tmp_path / "vif-bridge"
    with pytest.raises(scripts.ScriptError, match="script vif-nothing not found"):
        scripts.resolve("vif-nothing", tmp_path)
    with pytest.raises(scripts.ScriptError, match="is not executable"):
        scripts.resolve(str(tmp_path / "vif-common.sh"), tmp_path)


def test_running_a_script_reports_its_last_error_line(tmp_path):
    s = tmp_path / "vif-x"
    s.write_text("#!/bin/sh\necho \"$1 vif=$vif bridge=$bridge\"\n[ \"$1\" = online ] || "
                 "{ echo noise >&2; echo 'vif-x: it broke' >&2; exit 3; }\n")
    s.chmod(0o755)
    env = scripts.environment({"vif": "vif1.0", "bridge": "xenbr0", "unset": None})
    out = asyncio.run(scripts.run(s, "online", [], env, 10))
    assert out == "online vif=vif1.0 bridge=xenbr0\n"
    with pytest.raises(scripts.ScriptError, match="^vif-x: it broke$"):
        asyncio.run(scripts.run(s, "offline", [], env, 10))
    s.write_text("#!/bin/sh\nsleep 30\n")
    with pytest.raises(scripts.ScriptError, match="did not finish within 1 s"):
        asyncio.run(scripts.run(s, "online", [], env, 1))


def test_vif_scripts_take_args_only_as_defaults(tmp_path):
    # The vif's own settings (environment) win over xend-config's arguments.
    scripts.install(tmp_path)
    probe = tmp_path / "probe"
    probe.write_text('#!/bin/sh\n. "$(dirname "$0")/vif-common.sh"\necho "$command $bridge $netdev"\n')
    probe.chmod(0o755)
    env = scripts.environment({"vif": "vif1.0", "bridge": "mine", "PYXEN_RUN": str(tmp_path / "run")})
    out = asyncio.run(scripts.run(probe, "online", ["bridge=xenbr9", "netdev=eth3"], env, 10))
    assert out == "online mine eth3\n"
    with pytest.raises(scripts.ScriptError, match="Invalid command: 'up'"):
        asyncio.run(scripts.run(probe, "up", [], env, 10))
