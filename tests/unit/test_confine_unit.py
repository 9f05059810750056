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


def test_default_is_a_uid_per_domain_from_the_reserved_range():
    assert confine.identity(cfg(""), 3) == (1900000003, 1900000003)
    assert confine.identity(cfg("(qemu-uid-base 200000)"), 7) == (200007, 200007)


def test_qemu_user_takes_precedence_and_root_opts_out():
    assert confine.identity(cfg("(qemu-uid-base 200000) (qemu-user nobody)"), 1) == (65534, 65534)
    assert confine.identity(cfg("(qemu-user root)"), 1) is None
    assert confine.check_config(cfg("(qemu-user root)"))[1] == [
        "(qemu-user root): QEMU runs as root, not confined to its own uid"]


def test_range_with_a_real_account_is_refused():
    import pwd
    root_base = pwd.getpwnam("nobody").pw_uid - 5     # nobody (65534) is inside base .. base+65535
    errors, _ = confine.check_config(cfg(f"(qemu-uid-base {root_base})"))
    assert len(errors) == 1 and "is the real account 'nobody'" in errors[0], errors
    assert confine.check_config(cfg("")) == ([], [])
    assert confine.check_config(cfg("(qemu-uid-base 5)"))[0][0].startswith("(qemu-uid-base 5): must be")


def test_domid_outside_the_range_is_refused():
    with pytest.raises(XendError, match="outside the reserved range"):
        confine.identity(cfg(""), confine.RANGE)


def test_pci_and_sdl_run_as_root_with_only_what_they_need():
    dc = DomainConfig.from_values({"name": "t", "kernel": "/k", "memory": 64, "pci": ["0000:00:1f.3"]})
    assert confine.root_reason(dc) == "PCI passthrough (/dev/vfio)"
    assert confine.identity(cfg(""), 1, dc) is None
    pre = confine.launcher(None, dc)
    assert "--bounding-set=-all,+ipc_lock,+sys_resource" in pre and "--no-new-privs" in pre
    assert "--reuid=1900000001" in confine.launcher((1900000001, 1900000001))
    assert "--bounding-set=-all" in confine.launcher((5, 5))


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


def _runtime(tmp_path, fds):
    return qargv.Runtime(domid=1, run_dir=tmp_path, console_log=tmp_path / "c/guest-t.log", accel="tcg",
                         daemonize=False, add_fds=fds.adds, disk_fds=fds.disks)


def test_argv_passes_disks_as_fdsets(tmp_path):
    img = tmp_path / "a.img"
    img.write_bytes(b"\0" * 4096)
    dc = DomainConfig.from_values({"name": "t", "kernel": "/k", "memory": 64,
                                   "disk": [f"file:{img},xvda,w", f"file:{img},xvdb,r"]})
    fds = confine.QemuFds()
    try:
        fds.add_disks(dc.disks)
        a = qargv.build(dc, _runtime(tmp_path, fds))
        (fd_a, set_a, _), (fd_b, set_b, _) = fds.adds
        assert (set_a, set_b) == (1, 2)
        assert os.fstat(fd_a).st_ino == img.stat().st_ino
        assert "-runas" not in a and "-daemonize" not in a
        assert a[a.index("-sandbox") + 1] == "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        adds = [a[i + 1] for i, x in enumerate(a) if x == "-add-fd"]
        assert adds == [f"fd={fd_a},set=1,opaque=pyxen-disk:xvda", f"fd={fd_b},set=2,opaque=pyxen-disk:xvdb"]
        nodes = [json.loads(a[i + 1]) for i, x in enumerate(a) if x == "-blockdev"]
        assert [n["filename"] for n in nodes if n["driver"] == "file"] == ["/dev/fdset/1", "/dev/fdset/2"]
        assert str(img) not in " ".join(a)
        # Sockets by bare name: QEMU runs in its run dir.
        assert "socket,id=qmp,path=qmp.sock,server=on,wait=off" in a
        # The read-only disk is opened read-only.
        assert fcntl.fcntl(fd_b, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert fcntl.fcntl(fd_a, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    finally:
        fds.close()
    assert fds.adds == []


def test_qcow2_chain_passes_every_layer(tmp_path):
    import subprocess
    (tmp_path / "base.img").write_bytes(b"\0" * 65536)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw",
                    str(tmp_path / "mid.qcow2")], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2",
                    str(tmp_path / "top.qcow2")], check=True)
    dc = DomainConfig.from_values({"name": "t", "kernel": "/k", "memory": 64,
                                   "disk": [f"tap:qcow2:{tmp_path}/top.qcow2,xvda,w"]})
    fds = confine.QemuFds()
    try:
        fds.add_disks(dc.disks)
        assert fds.disks == {"xvda": (1, [(2, "qcow2"), (3, "raw")])}
        nodes = [json.loads(x) for i, x in enumerate(qargv.build(dc, _runtime(tmp_path, fds)))
                 if i and qargv.build(dc, _runtime(tmp_path, fds))[i - 1] == "-blockdev"]
        by = {n["node-name"]: n for n in nodes}
        assert [n["node-name"] for n in nodes] == ["f2-xvda", "b2-xvda", "f1-xvda", "b1-xvda", "f-xvda", "d-xvda"]
        assert by["d-xvda"]["backing"] == "b1-xvda" and by["b1-xvda"]["backing"] == "b2-xvda"
        assert "backing" not in by["b2-xvda"]           # raw: no backing at all
        assert by["f2-xvda"]["filename"] == "/dev/fdset/3" and by["f1-xvda"]["read-only"]
        assert os.fstat(fds.adds[2][0]).st_ino == (tmp_path / "base.img").stat().st_ino
    finally:
        fds.close()
    assert qargv.disk_node_names("xvda", 2) == ["d-xvda", "f-xvda", "b1-xvda", "f1-xvda", "b2-xvda", "f2-xvda"]


def test_backing_file_that_is_not_local_is_refused(tmp_path):
    import subprocess
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "nbd://127.0.0.1:1/x", "-F", "raw",
                    str(tmp_path / "n.qcow2"), "1M"], check=True)
    dc = DomainConfig.from_values({"name": "t", "kernel": "/k", "memory": 64,
                                   "disk": [f"tap:qcow2:{tmp_path}/n.qcow2,xvda,w"]})
    with pytest.raises(Exception, match=r"backing file 'nbd://127.0.0.1:1/x' .* is not a local file"):
        confine.QemuFds().add_disks(dc.disks)


def test_kernel_by_descriptor_and_unreadable_one_copied(tmp_path):
    k = tmp_path / "k"
    k.write_bytes(b"kernel")
    fds = confine.QemuFds()
    try:
        arg = fds.file_arg(str(k), "kernel k")
        fd = int(arg.rsplit("/", 1)[1])
        assert os.fstat(fd).st_ino == k.stat().st_ino
        k.chmod(0o600)
        arg = fds.file_arg(str(k), "kernel k")
        fd = int(arg.rsplit("/", 1)[1])
        assert os.fstat(fd).st_ino != k.stat().st_ino and os.pread(fd, 6, 0) == b"kernel"
    finally:
        fds.close()


def test_missing_disk_is_refused_before_qemu(tmp_path):
    dc = DomainConfig.from_values({"name": "t", "kernel": "/k", "memory": 64,
                                   "disk": [f"file:{tmp_path}/none.img,xvda,w"]})
    with pytest.raises(Exception, match=r"Cannot open disk file:.*none\.img \(xvda\): No such file"):
        confine.QemuFds().add_disks(dc.disks)


def test_benchmark_argv_unchanged(tmp_path):
    # The benchmarks run the argv themselves: QEMU daemonizes, paths as given.
    dc = DomainConfig.from_values({"name": "t", "kernel": "/k", "memory": 64, "disk": ["file:/x.img,xvda,w"]})
    rt = qargv.Runtime(domid=1, run_dir=tmp_path, console_log=tmp_path / "c/guest-t.log", accel="tcg")
    a = qargv.build(dc, rt)
    assert "-daemonize" in a and "-add-fd" not in a and "/x.img" in " ".join(a)
