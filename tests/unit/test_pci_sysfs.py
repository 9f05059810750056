"""PCI passthrough checks and rebinding against a fake sysfs tree.

This machine has no IOMMU and no spare PCI device, so a real VFIO
assignment cannot run here: these tests check what pyxen reads and writes
in sysfs, and the refusals, against pyxen.testing.sysfs.FakeSysfs.
"""

from __future__ import annotations

import pytest

from pyxen.config.domain import DomainConfig
from pyxen.config.specs import parse_pci
from pyxen.hypervisor.pci import PciError, PciHost, normal_bdf
from pyxen.hypervisor.qemu import argv as qargv
from pyxen.testing.sysfs import BRIDGE_CLASS, FakeSysfs
from pyxen.xm import format as fmt

BDF = "0000:01:00.0"


@pytest.fixture
def fake(tmp_path):
    return FakeSysfs(tmp_path)


def test_ready_device_passes(fake):
    fake.add_device(BDF, driver="vfio-pci", group=7)
    assert fake.host().check_assignable(BDF) == "7"
    assert fake.host().assignable() == [BDF]


@pytest.mark.parametrize("setup, needle", [
    (lambda f: None, "PCI device 0000:01:00.0 does not exist on this host"),
    (lambda f: f.add_device(BDF, driver="e1000e", group=None), "has no IOMMU"),
    (lambda f: f.add_device(BDF, driver="e1000e", group=3),
     "bound to e1000e instead of vfio-pci (xm pci-assignable-add 0000:01:00.0"),
    (lambda f: f.add_device(BDF, driver=None, group=3), "bound to no driver instead of vfio-pci"),
    (lambda f: (f.add_device(BDF, driver="vfio-pci", group=3),
                f.add_device("0000:01:00.1", driver="snd_hda_intel", group=3)),
     "0000:01:00.1, in the same IOMMU group 3, is bound to snd_hda_intel"),
    (lambda f: f.add_device(BDF, driver="vfio-pci", group=3, vfio_node=False), "/vfio/3 does not exist"),
])
def test_refusals(fake, setup, needle):
    setup(fake)
    with pytest.raises(PciError) as e:
        fake.host().check_assignable(BDF)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_no_iommu_groups_at_all(tmp_path):
    fake = FakeSysfs(tmp_path, iommu=False)
    fake.add_device(BDF, driver="vfio-pci", group=1)
    with pytest.raises(PciError, match="no IOMMU"):
        fake.host().check_assignable(BDF)


def test_group_with_bridge_and_unbound_devices_is_fine(fake):
    fake.add_device(BDF, driver="vfio-pci", group=2)
    fake.add_device("0000:00:1c.0", driver="pcieport", group=2, cls=BRIDGE_CLASS)
    fake.add_device("0000:01:00.1", driver=None, group=2)
    assert fake.host().check_assignable(BDF) == "2"


def test_assignable_add_and_remove_restores_driver(fake):
    fake.add_device(BDF, driver="e1000e", group=5)
    fake.add_driver("vfio-pci")
    fake.native[BDF] = "e1000e"
    k = fake.kernel()
    assert k.make_assignable(BDF) == "e1000e"
    assert k.driver(BDF) == "vfio-pci"
    assert (k.device_dir(BDF) / "driver_override").read_text() == "vfio-pci"
    assert k.check_assignable(BDF) == "5"
    assert k.make_assignable(BDF) is None          # already assignable
    k.release(BDF, "e1000e")
    assert k.driver(BDF) == "e1000e"
    assert (k.device_dir(BDF) / "driver_override").read_text().strip() == ""


def test_assignable_remove_without_rebind_leaves_it_unbound(fake):
    fake.add_device(BDF, driver="vfio-pci", group=5)
    k = fake.kernel()
    k.release(BDF, None)
    assert k.driver(BDF) is None


def test_assignable_add_refusals(fake):
    k = fake.kernel()
    with pytest.raises(PciError, match="does not exist"):
        k.make_assignable(BDF)
    fake.add_device("0000:00:1c.0", driver="pcieport", group=1, cls=BRIDGE_CLASS)
    with pytest.raises(PciError, match="is a bridge"):
        k.make_assignable("0000:00:1c.0")
    fake.add_device(BDF, driver="e1000e", group=5)
    with pytest.raises(PciError, match="vfio-pci driver is not available"):
        k.make_assignable(BDF)
    assert k.driver(BDF) == "e1000e"


def test_failed_bind_puts_the_device_back(fake):
    fake.add_device(BDF, driver="e1000e", group=5)
    fake.add_driver("vfio-pci")
    fake.native[BDF] = "e1000e"

    class Stubborn(type(fake.kernel())):
        def _write(self, path, text):
            if path.name == "drivers_probe" and (self.device_dir(BDF) / "driver_override").read_text() == "vfio-pci":
                return            # vfio-pci refuses the device
            super()._write(path, text)

        def _wait_driver(self, bdf, want, timeout=5.0):
            return self.driver(bdf) == want

    k = Stubborn(fake.sys, fake.dev)
    with pytest.raises(PciError, match="did not bind to vfio-pci"):
        k.make_assignable(BDF)
    assert k.driver(BDF) == "e1000e"


def test_env_relocates(fake):
    h = PciHost.from_env(fake.env)
    assert h.sys == fake.sys and h.dev == fake.dev


def test_normal_bdf():
    assert normal_bdf("1:0.0") == BDF
    assert normal_bdf("0000:01:00.0") == BDF
    for bad in ("", "01:00", "01:00.0@3", "zz:00.0", "01:00.0,msitranslate=1"):
        with pytest.raises(PciError):
            normal_bdf(bad)


def test_qemu_gets_vfio_device_for_pv_and_hvm(tmp_path):
    for builder, extra in (("linux", {"kernel": "/k"}), ("hvm", {})):
        cfg = DomainConfig.from_values({"name": "p", "builder": builder, "pci": ["01:00.0", "0000:02:00.1@5"],
                                        **extra})
        rt = qargv.Runtime(domid=1, run_dir=tmp_path, console_log=tmp_path / "c.log", accel="tcg")
        argv = qargv.build(cfg, rt)
        devs = [argv[i + 1] for i, a in enumerate(argv) if a == "-device" and "vfio" in argv[i + 1]]
        assert devs == ["vfio-pci,host=0000:01:00.0,id=pt-0000-01-00.0",
                        "vfio-pci,host=0000:02:00.1,id=pt-0000-02-00.1,addr=0x5"]


def test_pci_list_layout():
    devs = [{"domain": 0, "bus": 1, "slot": 0, "func": 0, "vslot": None}]
    assert fmt.pci_list(devs) == "domain bus  slot func\n0x0000 0x01 0x00 0x0\n"
    devs.append({"domain": 0, "bus": 2, "slot": 0, "func": 1, "vslot": 5})
    assert fmt.pci_list(devs) == ("VSlt VFn domain bus  slot func\n"
                                  "0x05 0x0 0x0000 0x02 0x00 0x1\n"
                                  "-    -   0x0000 0x01 0x00 0x0\n")
    assert fmt.pci_list([]) == ""


def test_sxp_form_round_trip():
    cfg = DomainConfig.from_sxp("(vm (name p) (image (linux (kernel /k))) "
                                "(device (pci (dev (domain 0x0)(bus 0x1)(slot 0x0)(func 0x0)))))")
    assert [p.bdf for p in cfg.pci] == [BDF]
    assert parse_pci("01:00.0").bdf == BDF


def test_a_device_goes_to_one_domain_only(fake, monkeypatch):
    from types import SimpleNamespace

    from pyxen.xend import passthrough
    from pyxen.xend.errors import Conflict, InvalidRequest
    monkeypatch.setenv("PYXEN_SYSFS", str(fake.sys))
    monkeypatch.setenv("PYXEN_DEVFS", str(fake.dev))
    fake.add_device(BDF, driver="vfio-pci", group=7)
    spec = parse_pci("01:00.0")
    # Any domain in the registry counts, whatever its state (here: shut down, preserved).
    other = SimpleNamespace(name="web", state="shutdown", cfg=SimpleNamespace(pci=[parse_pci(BDF)]))
    reg = SimpleNamespace(by_uuid={"u1": other})
    with pytest.raises(Conflict, match="already assigned to domain web"):
        passthrough.check_devices(reg, "db", [spec])
    passthrough.check_devices(reg, "web", [spec], exclude=other)
    reg.by_uuid.clear()
    passthrough.check_devices(reg, "db", [spec])
    with pytest.raises(InvalidRequest, match="given twice"):
        passthrough.check_devices(reg, "db", [spec, parse_pci("0000:01:00.0")])


def test_vtpm_specs():
    from pyxen.config.errors import ConfigError
    from pyxen.config.specs import parse_vtpm
    from pyxen.xend import vtpm
    assert parse_vtpm("instance=3,backend=0").instance == 3
    t = parse_vtpm("backend=0,uuid=6F1C7A3E-4A0B-4A39-9D2F-2E4D6C1B0A55")
    assert t.uuid == "6f1c7a3e-4a0b-4a39-9d2f-2e4d6c1b0a55" and t.instance is None
    for bad in ("instance=-1", "backend=1", "x=1", "instance", "uuid=nope"):
        with pytest.raises(ConfigError):
            parse_vtpm(bad)
    cfg = DomainConfig.from_values({"name": "d", "kernel": "/k", "vtpm": ["instance=2"]})
    assert DomainConfig.from_sxp(cfg.to_sxp()) == cfg
    assert vtpm.state_key(cfg) == "vtpm/instance-2"
    cfg.vtpm = [parse_vtpm("backend=0")]
    assert vtpm.state_key(cfg) == "vtpm/name-d"
    with pytest.raises(ConfigError, match="at most one vTPM"):
        DomainConfig.from_values({"name": "d", "kernel": "/k", "vtpm": ["instance=1", "instance=2"]})


def test_vtpm_qemu_args(tmp_path):
    cfg = DomainConfig.from_values({"name": "d", "kernel": "/k", "vtpm": ["instance=2"]})
    rt = qargv.Runtime(domid=1, run_dir=tmp_path, console_log=tmp_path / "c.log", accel="tcg",
                       tpm_sock=tmp_path / "tpm.sock")
    argv = qargv.build(cfg, rt)
    assert "emulator,id=tpm0,chardev=chrtpm" in argv and "tpm-crb,tpmdev=tpm0" in argv
    assert argv[argv.index("-bios") + 1] == "qboot.rom"
