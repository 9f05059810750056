"""The one domain-name rule (pyxen.config.names) at every entry point, and
QEMU option values escaped by the argv builder (pyxen.hypervisor.qemu.optstr)."""

import pytest

from pyxen.config import names, sxp, xmconfig
from pyxen.config.domain import DomainConfig
from pyxen.config.errors import ConfigError
from pyxen.hypervisor.qemu import argv as qargv
from pyxen.hypervisor.qemu import optstr
from pyxen.xend import web as webui
from pyxen.xend.errors import InvalidRequest

GOOD = ["vm1", "VM-1", "a_b", "web.example.com", "x:y", "c++", "0x1", "1a", "Domain-" + "0" * 36, "a" * 64]
BAD = ["a,process=evil", "two words", "tab\there", "new\nline", "esc\x1b[2J", "nul\x00", "123", "0",
       "", "a/b", "..", "quote'", 'dq"', "semi;colon", "dollar$", "é", "a" * 65, "a=b", "(x)"]


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass(name):
    assert names.check(name) == name


@pytest.mark.parametrize("name", BAD)
def test_bad_names_are_one_clear_line(name):
    with pytest.raises(ConfigError) as e:
        names.check(name)
    msg = str(e.value)
    assert msg.startswith("name: invalid domain name ")
    # Shown, never obeyed: no control character reaches the user's terminal.
    assert "\n" not in msg and "\x1b" not in msg and "\x00" not in msg and "\t" not in msg


@pytest.mark.parametrize("name", BAD[:8])
def test_every_entry_point_refuses(name, tmp_path):
    # xm create (a config file, and name= on the command line)
    f = tmp_path / "vm"
    f.write_text(f"name = {name!r}\nkernel = '/k'\nmemory = 64\n")
    with pytest.raises(ConfigError, match="invalid domain name"):
        xmconfig.load([str(f)])
    with pytest.raises(ConfigError, match="invalid domain name"):
        xmconfig.load([f"name={name}", "kernel=/k"])
    # the API / relocation / restore (all build from values or SXP)
    with pytest.raises(ConfigError, match="invalid domain name"):
        DomainConfig.from_values({"name": name, "kernel": "/k"})
    with pytest.raises(ConfigError, match="invalid domain name"):
        DomainConfig.from_sxp(["vm", ["name", name], ["image", ["linux", ["kernel", "/k"]]]])
    # the web upload, SXP and xl syntax
    with pytest.raises(InvalidRequest, match="invalid domain name"):
        webui.config_from_upload(sxp.to_string(["vm", ["name", name], ["image", ["linux", ["kernel", "/k"]]]]),
                                 "up.sxp")
    with pytest.raises(InvalidRequest, match="invalid domain name"):
        webui.config_from_upload(f"name = {name!r}\nkernel = '/k'\n", "up.cfg")


def _split(option: str) -> list[str]:
    """QEMU's reading of an option string: ',' separates, ',,' is a comma."""
    out, cur, i = [], "", 0
    while i < len(option):
        if option[i] == ",":
            if option[i + 1:i + 2] == ",":
                cur, i = cur + ",", i + 2
                continue
            out.append(cur)
            cur = ""
        else:
            cur += option[i]
        i += 1
    return out + [cur]


@pytest.mark.parametrize("v", ["plain", "a,b", "a,,b", ",", "x,id=evil,process=p", "/tmp/a,b/c.sock"])
def test_escaped_values_read_back_as_one_value(v):
    assert _split(optstr.value(v)) == [v]
    assert _split(optstr.props({"path": v, "id": "c"})) == [f"path={v}", "id=c"]
    assert _split(optstr.kv({"driver": "virtio", "serial": v}, "driver")) == ["virtio", f"serial={v}"]


@pytest.mark.parametrize("where", ["run,dir", "r,id=x", "plain"])
def test_argv_escapes_every_option_value(tmp_path, where):
    cfg = DomainConfig.from_values({"name": "vm1", "kernel": "/k", "memory": 64,
                                    "vif": ["mac=00:16:3e:00:00:01"]})
    run = tmp_path / where
    rt = qargv.Runtime(domid=1, run_dir=run, console_log=run / "guest-vm1.log", accel="tcg",
                       nics=[(0, "tap,x", None)])
    a = qargv.build(cfg, rt)
    chardevs = [a[i + 1] for i, x in enumerate(a) if x == "-chardev"]
    for c in chardevs:
        parts = dict(p.split("=", 1) for p in _split(c)[1:])
        assert parts["path"].startswith(str(run)), c
    netdev = _split(a[a.index("-netdev") + 1])
    assert "ifname=tap,x" in netdev and not any(p.startswith("x") for p in netdev)
    assert _split(a[a.index("-name") + 1]) == ["vm1", "debug-threads=on"]


def test_argv_name_is_escaped_even_if_a_caller_skipped_the_validator(tmp_path):
    cfg = DomainConfig.from_values({"name": "vm1", "kernel": "/k"})
    cfg.name = "a,process=evil"       # defence in depth: the builder escapes anyway
    rt = qargv.Runtime(domid=1, run_dir=tmp_path, console_log=tmp_path / "c.log", accel="tcg")
    a = qargv.build(cfg, rt)
    assert _split(a[a.index("-name") + 1]) == ["a,process=evil", "debug-threads=on"]
