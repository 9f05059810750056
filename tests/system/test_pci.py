"""PCI passthrough (§5.3.1) through xm and a real xend.

What cannot run here: a real VFIO assignment.  This machine has no IOMMU
and no spare PCI device, so xend is pointed (PYXEN_SYSFS, PYXEN_DEVFS) at
a fake sysfs tree (pyxen.testing.sysfs) and every refusal path is taken
end to end through ``xm create`` and ``xm pci-attach``: each must be one
clear line, and leave no domain, no QEMU and no state behind.  When the
fake tree says the device is ready, the checks pass and QEMU itself
refuses (there is no such device in the real /sys): that is the create
path up to QEMU, rolled back.  The rebinding protocol and the "one domain
per device" rule are tested against the fake tree in tests/unit/test_pci.py.
"""

from __future__ import annotations

import pytest

from pyxen.testing import state
from pyxen.testing.sysfs import FakeSysfs

BDF = "0000:01:00.0"


def clean_error(res, *needles):
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    err = res.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, (n, err)


def nothing_left(host):
    assert set(host.domains()) == {"Domain-0"}
    assert host.qemu_pids() == []
    assert not state.runtime_records(host.root)


@pytest.fixture
def fake_host(make_host, tmp_path):
    fake = FakeSysfs(tmp_path / "fake")
    h = make_host(start=False)
    h.env.update(fake.env)
    h.xend("start")
    return h, fake


def test_create_refusals_leave_nothing(fake_host):
    host, fake = fake_host
    cfg = host.config("pt", pci=["01:00.0"])

    res = host.xm("create", str(cfg), check=False)
    clean_error(res, f"PCI device {BDF} does not exist on this host")
    nothing_left(host)

    fake.add_device(BDF, driver="e1000e")
    res = host.xm("create", str(cfg), check=False)
    clean_error(res, "this host has no IOMMU")
    nothing_left(host)

    fake.put_in_group(BDF, 1, vfio_node=False)
    # The command-line form (xm create ... pci=01:00.0) takes the same path.
    res = host.xm("create", str(host.config("pt2")), "pci=01:00.0", check=False)
    clean_error(res, f"PCI device {BDF} is not assignable", "bound to e1000e instead of vfio-pci",
                f"xm pci-assignable-add {BDF}")
    nothing_left(host)

    fake.bind(BDF, "vfio-pci")
    fake.add_device("0000:01:00.1", driver="snd_hda_intel")
    fake.put_in_group("0000:01:00.1", 1, vfio_node=False)
    res = host.xm("create", str(cfg), check=False)
    clean_error(res, "0000:01:00.1, in the same IOMMU group 1, is bound to snd_hda_intel")
    nothing_left(host)

    fake.bind("0000:01:00.1", None)
    sxp = host.root / "pt.sxp"
    sxp.write_text(f"(vm (name ptsxp) (memory 64) (image (linux (kernel {host.image}/vmlinuz) "
                   f"(ramdisk {host.image}/initrd.img))) "
                   "(device (pci (dev (domain 0x0)(bus 0x1)(slot 0x0)(func 0x0)))))")
    res = host.xm("create", "-F", str(sxp), check=False)
    clean_error(res, "/vfio/1 does not exist", "vfio-pci module")
    nothing_left(host)

    # Everything the checks look at is ready; QEMU then finds no such
    # device in the real /sys and refuses: the create is rolled back.
    (fake.dev / "vfio/1").touch()
    res = host.xm("create", str(cfg), check=False)
    clean_error(res, "QEMU failed to start domain pt")
    nothing_left(host)
    log = (host.root / "var/log/xen/xend.log").read_text()
    assert f"vfio-pci,host={BDF}" in log


def test_assignable_and_hotplug_commands(fake_host):
    host, fake = fake_host
    assert host.xm("pci-list-assignable-devices").stdout == ""
    fake.add_device(BDF, driver="vfio-pci", group=3)
    fake.add_device("0000:02:00.0", driver="e1000e", group=4)
    assert host.xm("pci-list-assignable-devices").stdout == f"{BDF}\n"

    clean_error(host.xm("pci-assignable-add", "05:00.0", check=False), "PCI device 0000:05:00.0 does not exist")
    clean_error(host.xm("pci-assignable-add", "nonsense", check=False), "Invalid PCI device 'nonsense'")
    host.xm("pci-assignable-add", "01:00.0")           # already assignable: nothing to do
    # The static fake tree never binds anything: the rebinding is tried, its
    # failure reported and the device given back to its driver.
    clean_error(host.xm("pci-assignable-add", "02:00.0", check=False),
                "PCI device 0000:02:00.0 did not bind to vfio-pci (bound to e1000e)")
    assert fake.host().driver("0000:02:00.0") == "e1000e"
    clean_error(host.xm("pci-assignable-remove", "02:00.0", check=False), "bound to e1000e, not vfio-pci")

    # A running guest: hot-plug is checked the same way, and QEMU's refusal
    # leaves the domain as it was.
    host.xm("create", str(host.config("hp")))
    assert host.xm("pci-list", "hp").stdout == ""
    clean_error(host.xm("pci-attach", "hp", "02:00.0", check=False), "bound to e1000e instead of vfio-pci")
    # A confined QEMU cannot take a VFIO device: refused before QEMU is asked.
    clean_error(host.xm("pci-attach", "hp", BDF, "5", check=False), f"pci-attach {BDF} to hp: its QEMU runs confined")
    clean_error(host.xm("pci-attach", "-o", "bogus=1", "hp", BDF, check=False), "Invalid pci attach option")
    assert host.xm("pci-list", "hp").stdout == ""
    clean_error(host.xm("pci-detach", "hp", BDF, check=False), f"PCI device {BDF} is not assigned to domain hp")
    assert "(device (pci" not in host.xm("list", "-l", "hp").stdout
    assert host.domains()["hp"]["state"] in ("r-----", "-b----")
    host.xm("destroy", "hp")

    # Released from vfio-pci (the fake kernel does not act on it; the write is what counts).
    host.xm("pci-assignable-remove", BDF)
    assert (fake.sys / "bus/pci/devices" / BDF / "driver_override").read_text() == "\n"
