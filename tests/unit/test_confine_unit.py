"""Unprivileged QEMU (xend/confine.py): who QEMU runs as, and the command
line that hands it descriptors instead of disk paths."""

from __future__ import annotations

import fcntl
import json
import os
import pytest

from pyxen.config.domain import DomainConfig
from pyxen.config.xendconfig import XendConfig, XendConfigError
from pyxen.hypervisor.qemu import argv as qargv
from pyxen.xend import confine
from pyxen.xend.errors import XendError


def cfg(text: str) -> XendConfig:
    return XendConfig.parse(text)


def test_default_is_root():
    assert confine.identity(cfg(""), 3) is None
    assert confine.runas(None) is None


def test_uid_base_gives_each_domain_its_own_ids():
    c = cfg("(qemu-uid-base 200000) (qemu-user nobody)")
    assert confine.identity(c, 1) == (200001, 200001)
    assert confine.identity(c, 7) == (200007, 200007)
    assert confine.runas((200007, 200007)) == "200007:200007"


@pytest.mark.parametrize("text,want", [("(qemu-user 1234)", (1234, 1234)), ("(qemu-user 12:34)", (12, 34)),
                                        ("(qemu-user nobody)", (65534, 65534)), ("(qemu-user root)", None)])
def test_qemu_user(text, want):
    assert confine.identity(cfg(text), 1) == want


@pytest.mark.parametrize("text", ["(qemu-user no-such-user-x)", "(qemu-user 1:x)"])
def test_bad_qemu_user_is_a_clean_error(text):
    with pytest.raises(XendError, match=r"^\(qemu-user "):
        confine.identity(cfg(text), 1)


def test_uid_base_must_be_a_number():
    with pytest.raises(XendConfigError, match="qemu-uid-base"):
        cfg("(qemu-uid-base lots)")


def test_argv_passes_disks_as_fdsets(tmp_path):
    img = tmp_path / "a.img"
    img.write_bytes(b"\0" * 4096)
    dc = DomainConfig.from_values({"name": "t", "kernel": "/k", "memory": 64,
                                   "disk": [f"file:{img},xvda,w", f"file:{img},xvdb,r"]})
    fds = confine.DiskFds(dc.disks)
    try:
        rt = qargv.Runtime(domid=1, run_dir=tmp_path, console_log=tmp_path / "c/guest-t.log", accel="tcg",
                           runas="200001:200001", disk_fds=fds.sets)
        a = qargv.build(dc, rt)
        (fd_a, set_a), (fd_b, set_b) = fds.sets["xvda"], fds.sets["xvdb"]
        assert (set_a, set_b) == (1, 2)
        assert os.fstat(fd_a).st_ino == img.stat().st_ino
        assert a[a.index("-runas") + 1] == "200001:200001"
        adds = [a[i + 1] for i, x in enumerate(a) if x == "-add-fd"]
        assert adds == [f"fd={fd_a},set=1,opaque=pyxen-disk:xvda", f"fd={fd_b},set=2,opaque=pyxen-disk:xvdb"]
        nodes = [json.loads(a[i + 1]) for i, x in enumerate(a) if x == "-blockdev"]
        assert [n["filename"] for n in nodes if n["driver"] == "file"] == ["/dev/fdset/1", "/dev/fdset/2"]
        assert str(img) not in " ".join(a)
        # The read-only disk is opened read-only.
        assert fcntl.fcntl(fd_b, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert fcntl.fcntl(fd_a, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    finally:
        fds.close()
    assert fds.sets == {}


def test_missing_disk_is_refused_before_qemu(tmp_path):
    dc = DomainConfig.from_values({"name": "t", "kernel": "/k", "memory": 64,
                                   "disk": [f"file:{tmp_path}/none.img,xvda,w"]})
    with pytest.raises(Exception, match=r"Cannot open disk file:.*none\.img \(xvda\): No such file"):
        confine.DiskFds(dc.disks)


def test_root_argv_unchanged(tmp_path):
    dc = DomainConfig.from_values({"name": "t", "kernel": "/k", "memory": 64, "disk": ["file:/x.img,xvda,w"]})
    rt = qargv.Runtime(domid=1, run_dir=tmp_path, console_log=tmp_path / "c/guest-t.log", accel="tcg")
    a = qargv.build(dc, rt)
    assert "-runas" not in a and "-add-fd" not in a and "/x.img" in " ".join(a)


def test_image_formats_keep_their_path(tmp_path):
    # A qcow2's relative backing file resolves against the image's name.
    dc = DomainConfig.from_values({"name": "t", "kernel": "/k", "memory": 64,
                                   "disk": [f"tap:qcow2:{tmp_path}/a.qcow2,xvda,w", "nbd:host 10809,xvdb,w"]})
    assert [confine.passes_fd(d) for d in dc.disks] == [False, False]
    assert confine.DiskFds(dc.disks).sets == {}
