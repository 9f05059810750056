"""The block sharing guard's rule, on real files, symlinks and a loop device."""

from __future__ import annotations

import os
import subprocess

import pytest

from pyxen.config.specs import parse_disk
from pyxen.storage import guard, lvm


def _img(tmp_path, name="a.img", size=1 << 20):
    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(size)
    return p


def test_same_file_through_a_symlink_is_the_same(tmp_path):
    img = _img(tmp_path)
    link = tmp_path / "alias"
    link.symlink_to(img)
    assert guard.identities(str(img)) == guard.identities(str(link))
    assert guard.identities(str(tmp_path / "missing")) == set()


def test_rule_rw_exclusive_ro_shared(tmp_path):
    img = _img(tmp_path)
    link = tmp_path / "alias"
    link.symlink_to(img)
    rw = parse_disk(f"file:{img},sda1,w")
    ro = parse_disk(f"file:{link},sdb,r")
    existing = guard.exports([("web", rw)])
    with pytest.raises(guard.SharingError, match=r"already exported read-write to domain web as sda1"):
        guard.check("db", [parse_disk(f"file:{link},sda1,w")], existing, mounts={})
    with pytest.raises(guard.SharingError, match="read-write to domain web"):
        guard.check("db", [ro], existing, mounts={})       # ro of an rw export: refused
    # Read-only sharing is fine; a new rw export of a ro-shared file is not.
    ro_existing = guard.exports([("web", parse_disk(f"file:{img},sda1,r"))])
    assert guard.check("db", [ro], ro_existing, mounts={}) == []
    with pytest.raises(guard.SharingError, match="already exported read-only"):
        guard.check("db", [parse_disk(f"file:{link},sdb,w")], ro_existing, mounts={})
    # w! overrides, with a warning for the log.
    warns = guard.check("db", [parse_disk(f"file:{link},sda1,w!")], existing, mounts={})
    assert len(warns) == 1 and "w!" in warns[0] and "web" in warns[0]
    # Twice in one domain's own list counts too.
    with pytest.raises(guard.SharingError, match="to this domain as sda1"):
        guard.check("db", [parse_disk(f"file:{img},sda1,w"), parse_disk(f"file:{link},sdb,r")], [], mounts={})


def test_mountinfo_read_write_filesystems_only():
    # Per-mount and superblock options both count: a read-only superblock
    # under a rw mount is not writable.
    info = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            "23 1 8:2 / /ro ro,relatime - ext4 /dev/sda2 ro\n"
            "24 1 8:3 / /x rw - ext4 /dev/sda3 ro\n")
    assert guard.rw_mounts(info) == {"blk:8:1": "/"}


def test_loop_device_over_an_image_is_the_image(tmp_path):
    img = _img(tmp_path, size=4 << 20)
    res = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"losetup failed on this host: {res.stderr}")
    loop = res.stdout.strip()
    try:
        assert guard.identities(loop) & guard.identities(str(img))
        existing = guard.exports([("web", parse_disk(f"phy:{loop},sda1,w"))])
        with pytest.raises(guard.SharingError, match="domain web"):
            guard.check("db", [parse_disk(f"file:{img},sda1,w")], existing, mounts={})
        # Mounted read-write on the host through the loop device: refused rw, allowed ro.
        st = os.stat(loop)
        mounts = {f"blk:{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}": "/mnt/x"}
        with pytest.raises(guard.SharingError, match="mounted read-write on the host at /mnt/x"):
            guard.check("db", [parse_disk(f"file:{img},sda1,w")], [], mounts=mounts)
        assert guard.check("db", [parse_disk(f"file:{img},sda1,r")], [], mounts=mounts) == []
    finally:
        subprocess.run(["losetup", "-d", loop])


def test_lvm_names_and_missing_device_mapper():
    assert lvm.lv_path("vg0", "root") == "/dev/vg0/root"
    with pytest.raises(lvm.LvmError, match="bad logical volume name"):
        lvm.lv_path("vg0", "../etc")
    ok, why = lvm.dm_available()
    if not ok:
        # This machine's kernel has no device-mapper: the snapshot helper
        # must say so rather than half-create anything.
        with pytest.raises(lvm.LvmError, match="device-mapper is not available"):
            lvm.snapshot("vg0", "root", "clone")


def test_missing_lvm_volume_names_device_mapper(monkeypatch):
    from pyxen.storage import lvm
    monkeypatch.setattr(lvm, "dm_available", lambda: (False, "dmsetup is not installed"))
    hint = lvm.missing_hint("/dev/vg0/root")
    assert "LVM logical volume vg0/root" in hint and "device-mapper is not available" in hint
    assert lvm.missing_hint("/dev/sda1") == "" and lvm.missing_hint("/dev/disk/by-id") == ""
    monkeypatch.setattr(lvm, "dm_available", lambda: (True, ""))
    assert "no logical volume root in volume group vg0" in lvm.missing_hint("/dev/vg0/root")
