"""xm config evaluation, specs, DomainConfig <-> SXP, xend-config.sxp."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyxen.config import sxp
from pyxen.config.domain import DomainConfig
from pyxen.config.errors import ConfigError
from pyxen.config.specs import parse_disk, parse_vif
from pyxen.config.xendconfig import XendConfig, XendConfigError, default_file_text, OPTIONS
from pyxen.config import xmconfig

EXAMPLES = next(d / "shared/reference/examples-3.0.0" for d in Path(__file__).resolve().parents
                if (d / "shared/reference/examples-3.0.0").is_dir())


def load(*args, path=None):
    cfg, _ = xmconfig.load(list(args), search_path=[str(path or EXAMPLES)])
    return cfg


def test_xmexample2_vmid_gives_vm3_with_its_disks():
    cfg = load("xmexample2", "vmid=3")
    assert cfg.name == "VM3"
    assert cfg.vcpus == 4 and cfg.memory == 64
    assert [(d.uname, d.target, d.vdev, d.mode) for d in cfg.disks] == [
        ("phy:sda10", "/dev/sda10", "sda1", "w"), ("phy:sda6", "/dev/sda6", "sda6", "r")]
    assert cfg.kernel_args() == "root=/dev/sda1 ro 4 VMID=3 usr=/dev/sda6"


def test_xmexample2_rejects_bad_vmid():
    with pytest.raises(ConfigError, match="vmid"):
        load("xmexample2", "vmid=0")
    with pytest.raises(ConfigError, match="vmid"):
        load("xmexample2")


def test_xmexample1_and_command_line_overrides():
    cfg = load("xmexample1", "memory=256", "name=other")
    assert (cfg.name, cfg.memory) == ("other", 256)
    assert cfg.disks[0].target == "/dev/hda1"
    assert cfg.on_poweroff == "destroy" and cfg.on_reboot == "restart" and cfg.on_crash == "restart"


def test_name_defaults_to_basename(tmp_path):
    (tmp_path / "mydom").write_text('kernel = "/k"\n')
    assert load("mydom", path=tmp_path).name == "mydom"


def test_syntax_error_names_file_and_line(tmp_path):
    (tmp_path / "bad").write_text('kernel = "/k"\nmemory = 64\nvcpus = [\n')
    with pytest.raises(ConfigError, match=r"Errors were found at line 3 while processing .*bad"):
        load("bad", path=tmp_path)


def test_runtime_error_names_line(tmp_path):
    (tmp_path / "bad").write_text('kernel = "/k"\n\nx = 1/0\n')
    with pytest.raises(ConfigError, match=r"line 3 .*ZeroDivisionError"):
        load("bad", path=tmp_path)


def test_xl_syntax(tmp_path):
    (tmp_path / "xl.cfg").write_text('name="xl1"; type="pvh"\nkernel="/k"\nmemory=0400\n'
                                    'vcpus=2\nmaxvcpus=4\ncap=50\non_crash="destroy"\n')
    cfg = load("xl.cfg", path=tmp_path)
    assert (cfg.name, cfg.memory, cfg.vcpus, cfg.maxvcpus, cfg.cpu_cap, cfg.on_crash) == \
        ("xl1", 256, 2, 4, 50, "destroy")


def test_sxp_round_trip():
    cfg = load("xmexample2", "vmid=2")
    again = DomainConfig.from_sxp(sxp.from_string(sxp.to_string(cfg.to_sxp())))
    assert again == cfg


def test_ip_parameter():
    cfg = DomainConfig.from_values({"name": "n", "kernel": "/k", "ip": "10.0.0.2", "gateway": "10.0.0.1",
                                    "netmask": "255.0.0.0", "hostname": "h"})
    assert cfg.kernel_args() == "ip=10.0.0.2::10.0.0.1:255.0.0.0:h:eth0:off"


@pytest.mark.parametrize("entry,msg", [
    ("file:/x,sda1", "expected 'type:target,vdev,mode'"),
    ("file:/x,sda1,rw", "Invalid mode"),
    ("zzz:/x,sda1,w", "unknown type"),
    ("nbd:host,sda1,w", "nbd: needs"),
    ("file:/x,floppy,w", "bad virtual device"),
    ("/x,sda1,w", "needs a type prefix"),
    ("tap:zzz:/x,sda1,w", "unknown tap driver"),
])
def test_bad_disk_specs(entry, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_disk(entry)


def test_disk_specs():
    d = parse_disk("tap:qcow2:/img.q2,xvda,w!")
    assert (d.kind, d.fmt, d.target, d.vdev, d.mode, d.readonly) == ("tap", "qcow2", "/img.q2", "xvda", "w!", False)
    d = parse_disk("file:/img,ioemu:hda,r")
    assert d.ioemu and d.readonly and d.vdev == "hda"
    d = parse_disk(",hdc:cdrom,r")
    assert d.devtype == "cdrom" and d.kind == ""
    assert parse_disk("phy:vg/lv,sda1,w").target == "/dev/vg/lv"


def test_vif_specs():
    assert parse_vif("mac=00:16:3E:00:00:11, bridge=xen-br0") == {"mac": "00:16:3E:00:00:11", "bridge": "xen-br0"}
    assert parse_vif("") == {}
    with pytest.raises(ConfigError, match="Invalid vif option: colour"):
        parse_vif("colour=red")
    with pytest.raises(ConfigError, match="should be a pair"):
        parse_vif("bridge")


def test_xend_config_example_and_defaults():
    cfg = XendConfig.parse((EXAMPLES / "xend-config.sxp").read_text())
    assert cfg["xend-http-server"] is True and cfg["xend-relocation-server"] is True
    assert cfg["xend-address"] == "localhost" and cfg["dom0-min-mem"] == 196
    assert cfg["network-script"] == "network-bridge" and cfg["xend-port"] == 8000
    assert cfg["accel"] == "auto"


def test_xend_config_default_file_is_all_defaults():
    cfg = XendConfig.parse(default_file_text())
    assert cfg.values == {o.name: o.default for o in OPTIONS}
    assert all(f"#({o.name} " in default_file_text() for o in OPTIONS)


def test_xend_config_errors_and_unknown():
    cfg = XendConfig.parse("(frobnicate yes)\n(xend-http-server on)\n")
    assert cfg.unknown == ["frobnicate"] and cfg["xend-http-server"] is True
    with pytest.raises(XendConfigError, match=r"xend-port.*integer"):
        XendConfig.parse("(xend-port eighty)")
    with pytest.raises(XendConfigError, match=r"accel.*auto, kvm, tcg"):
        XendConfig.parse("(accel fast)")
    with pytest.raises(XendConfigError, match="xend-config.sxp"):
        XendConfig.parse("(xend-port 1")


def test_every_3_0_0_example_loads():
    """Each shipped Xen 3.0.0 example evaluates to a domain config, as in Xen."""
    got = {}
    for f in ("xmexample1", "xmexample2", "xmexample3", "xmexample.nbd", "xmexample.vmx"):
        cfg = load(f, "vmid=2")
        got[f] = cfg
        again = DomainConfig.from_sxp(sxp.from_string(sxp.to_string(cfg.to_sxp())))
        assert again == cfg, f
    assert got["xmexample3"].name == "VM2" and got["xmexample3"].vifs == [{"ip": "192.168.2.1/24"}]
    assert got["xmexample3"].cpus == "2"
    assert got["xmexample.nbd"].disks[0].kind == "nbd"
    assert got["xmexample.nbd"].disks[0].target == "134.100.233.115 20004"
    vmx = got["xmexample.vmx"]
    assert vmx.builder == "hvm" and vmx.disks[0].ioemu and vmx.hvm["vnc"] == 1
    assert ["vnc", 1] in vmx.to_sxp()[[i for i, x in enumerate(vmx.to_sxp()) if x[0] == "image"][0]][1]


def test_xl_disk_specs():
    d = parse_disk("target=/img/a.q2,vdev=xvda,format=qcow2,access=rw")
    assert (d.target, d.vdev, d.fmt, d.mode) == ("/img/a.q2", "xvda", "qcow2", "w")
    d = parse_disk("/dev/vg/lv,raw,xvdb,ro")
    assert (d.kind, d.target, d.mode) == ("phy", "/dev/vg/lv", "r")
    d = parse_disk("format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/iso/a,b.iso")
    assert (d.devtype, d.target) == ("cdrom", "/iso/a,b.iso")
    with pytest.raises(ConfigError, match="access"):
        parse_disk("target=/x,vdev=xvda,access=rwx")
    with pytest.raises(ConfigError, match="vdev is required"):
        parse_disk("/x,raw,,rw")


def test_cpus_syntax():
    from pyxen.config.specs import format_cpuset, parse_cpuset
    assert parse_cpuset("0-3,^1") == {0, 2, 3}
    assert format_cpuset(parse_cpuset("0-3,5,^1")) == "0,2-3,5"
    assert 7 not in parse_cpuset("all,^7") and 63 in parse_cpuset("all,^7")
    cfg = DomainConfig.from_values({"name": "c", "kernel": "/k", "cpus": ["2", "3-8,^5"]})
    assert cfg.cpus == ["2", "3-8,^5"]
    with pytest.raises(ConfigError, match="cpus"):
        DomainConfig.from_values({"name": "c", "kernel": "/k", "cpus": "0-x"})


def test_xl_octal_numbers_but_not_inside_strings():
    # A uuid group such as -0412- once became -0o412- (a random uuid broke).
    v = xmconfig.parse_xl('uuid = "1f8840f3-0412-49bd-8d20-146d242217cc"\nmemory = 0200\n'
                          "x = ['0-0412', \"a\\\"0412\", 0777]\n", "t.cfg")
    assert v == {"uuid": "1f8840f3-0412-49bd-8d20-146d242217cc", "memory": 128,
                 "x": ["0-0412", 'a"0412', 511]}
