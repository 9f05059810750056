"""Storage migration's pure parts (issue 19): the (storage ...) request
parsed and refused, the target's per-disk plan (shared, backing kept,
flattened, no space, an existing file), the journal of created disks and
its recovery, and the target's answer (the NBD channel's port and key)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pyxen.xend import storagemigrate as sm
from pyxen.xend.errors import InvalidRequest

PROBE = sm.PROBE + "0123456789abcdef"


def disk(path: Path, fmt="raw", size=1 << 20, alloc=None, backing=(), vdev="xvdb", file_size=None) -> list:
    entry = ["disk", ["vdev", vdev], ["path", str(path)], ["format", fmt], ["size", str(size)],
             ["file-size", str(size if file_size is None else file_size)],
             ["alloc", str(size if alloc is None else alloc)], ["top-alloc", str(size if alloc is None else alloc)],
             ["probe", PROBE]]
    if backing:
        entry.append(["backing", *[["image", ["path", str(p)], ["format", "raw"], ["file-size", str(n)]]
                                   for p, n in backing]])
    return entry


def plan(*entries):
    return sm.plan(sm.parse(["storage", *entries]))


@pytest.mark.parametrize("change, needle", [
    (lambda e: e.__setitem__(2, ["path", "relative/x.img"]), "absolute"),
    (lambda e: e.__setitem__(1, ["vdev", "../etc"]), "bad disk name"),
    (lambda e: e.__setitem__(3, ["format", "vmdk"]), "format"),
    (lambda e: e.__setitem__(4, ["size", "many"]), "sizes"),
    (lambda e: e.__setitem__(8, ["probe", "/etc/passwd"]), "probe"),
])
def test_bad_requests_are_refused(tmp_path, change, needle):
    e = disk(tmp_path / "x.img")
    change(e)
    with pytest.raises(InvalidRequest, match=needle):
        sm.parse(["storage", e])


def test_a_new_disk_is_copied_a_shared_one_is_not(tmp_path):
    shared = tmp_path / "shared.img"
    shared.write_bytes(b"\0" * 4096)
    (tmp_path / PROBE).touch()
    got = plan(disk(tmp_path / "new.img"), disk(shared, vdev="xvdc", size=4096))
    assert [d["how"] for d in got] == ["copy", "shared"]
    assert sm.summary({d["vdev"]: d["how"] for d in got}) == "xvdb copied; xvdc shared, not copied"


def user_shared(path: Path, size: int, vdev="xvdb") -> list:
    return ["disk", ["vdev", vdev], ["path", str(path)], ["shared", 1], ["file-size", str(size)]]


def test_a_disk_the_user_calls_shared_is_not_copied_but_must_be_there(tmp_path):
    """--shared-disk: no probe needed (a directory the source cannot write
    into, a format --copy-storage could not copy), but the file must be here
    with the source's size; anything else is refused, nothing created."""
    img = tmp_path / "san.vmdk"
    img.write_bytes(b"\1" * 8192)
    got = plan(user_shared(img, 8192), disk(tmp_path / "new.img", vdev="xvdc"))
    assert [d["how"] for d in got] == ["shared", "copy"]
    with pytest.raises(sm.StorageRefused, match="given as shared .--shared-disk. but .* is not a file"):
        plan(user_shared(tmp_path / "absent.img", 8192))
    with pytest.raises(sm.StorageRefused, match="another size"):
        plan(user_shared(img, 4096))
    with pytest.raises(InvalidRequest, match="absolute"):
        sm.parse(["storage", user_shared(Path("rel.img"), 1)])
    assert not (tmp_path / "new.img").exists()


def test_an_existing_file_that_is_not_the_sources_is_never_overwritten(tmp_path):
    other = tmp_path / "x.img"
    other.write_bytes(b"mine")
    with pytest.raises(sm.StorageRefused, match="already exists on this host"):
        plan(disk(other))
    (tmp_path / PROBE).touch()          # a shared directory, but another size: not the same image
    with pytest.raises(sm.StorageRefused, match="refusing to overwrite"):
        plan(disk(other))
    assert other.read_bytes() == b"mine"


def test_missing_directory_and_space_are_refused_before_anything_is_created(tmp_path):
    with pytest.raises(sm.StorageRefused, match="does not exist on this host"):
        plan(disk(tmp_path / "nodir" / "x.img"))
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    with pytest.raises(sm.StorageRefused, match="not enough space.*sparse on the source") as e:
        plan(disk(tmp_path / "big.img", size=free * 2, alloc=4096))
    assert "free" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_qcow2_backing_kept_when_the_same_file_is_here_else_flattened(tmp_path):
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 8192)
    got = plan(disk(tmp_path / "a.qcow2", "qcow2", backing=[(base, 8192)]),
               disk(tmp_path / "b.qcow2", "qcow2", backing=[(base, 4096)], vdev="xvdc"),
               disk(tmp_path / "c.qcow2", "qcow2", vdev="xvdd"))
    assert [d["how"] for d in got] == ["backing", "flatten", "copy"]


def test_journal_creates_removes_and_recovers(tmp_path):
    lib, images = tmp_path / "lib", tmp_path / "img"
    images.mkdir()
    base = images / "base.raw"
    base.write_bytes(b"\0" * (1 << 20))
    disks = plan(disk(images / "a.raw"), disk(images / "b.qcow2", "qcow2", backing=[(base, 1 << 20)], vdev="xvdc"))
    j = sm.Journal(lib, "u1")
    j.create(disks)
    assert (images / "a.raw").stat().st_size == 1 << 20
    info = subprocess.run(["qemu-img", "info", str(images / "b.qcow2")], capture_output=True, text=True).stdout
    assert str(base) in info
    assert j.path.exists()
    # A crash: the next xend removes them unless the domain runs here.
    sm.recover(lib, running={"other"})
    assert not (images / "a.raw").exists() and not (images / "b.qcow2").exists() and base.exists()
    assert not j.path.exists()
    j2 = sm.Journal(lib, "u2")
    j2.create(plan(disk(images / "c.raw")))
    sm.recover(lib, running={"u2"})
    assert (images / "c.raw").exists() and not j2.path.exists()
    # A file replaced since (another inode) is not ours any more.
    j3 = sm.Journal(lib, "u3")
    j3.create(plan(disk(images / "d.raw")))
    (images / "d.raw").unlink()
    (images / "d.raw").write_bytes(b"someone else's")
    j3.remove()
    assert (images / "d.raw").read_bytes() == b"someone else's"


def test_reply_round_trip_and_bad_replies():
    nbd = {"port": 40123, "user": "pyxen-0123abcd", "key": "ab" * 32}
    msg = ["ok", ["domid", "3"], sm.reply([{"vdev": "xvdb", "how": "copy"}, {"vdev": "xvdc", "how": "shared"}], nbd)]
    assert sm.parse_reply(msg[1:]) == (nbd, {"xvdb": "copy", "xvdc": "shared"})
    # Every disk shared: no NBD channel at all.
    only_shared = sm.reply([{"vdev": "xvdc", "how": "shared"}], None)
    assert sm.parse_reply([only_shared]) == (None, {"xvdc": "shared"})
    with pytest.raises(InvalidRequest, match="does not copy storage"):
        sm.parse_reply([["domid", "3"]])
    with pytest.raises(InvalidRequest, match="gave no NBD channel"):
        sm.parse_reply([["storage", ["disk", ["vdev", "xvdb"], ["how", "copy"]]]])
    for bad in ({**nbd, "key": "short"}, {**nbd, "port": 0}, {**nbd, "user": "root"}):
        with pytest.raises(InvalidRequest, match="malformed"):
            sm.parse_reply([sm.reply([{"vdev": "xvdb", "how": "copy"}], bad)])
