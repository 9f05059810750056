"""The rule for every file xend writes at a user-named path (xend/userpath.py)."""

import os
import socket
import stat

import pytest

from pyxen.xend import userpath
from pyxen.xend.errors import InvalidRequest


def _specials(d):
    """One of every kind of non-regular file, made privately under *d*."""
    made = {}
    made["chardev"] = d / "null"
    os.mknod(made["chardev"], 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    made["blockdev"] = d / "blk"
    os.mknod(made["blockdev"], 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    made["fifo"] = d / "fifo"
    os.mkfifo(made["fifo"])
    made["socket"] = d / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(made["socket"]))
    s.close()
    made["dir"] = d / "dir"
    made["dir"].mkdir()
    (d / "root-file").write_text("precious\n")
    made["symlink"] = d / "link"
    made["symlink"].symlink_to(d / "root-file")
    made["dangling"] = d / "dangling"
    made["dangling"].symlink_to(d / "nowhere")
    return made


def test_every_non_regular_target_is_refused_with_one_line(tmp_path):
    for kind, p in _specials(tmp_path).items():
        before = os.lstat(p)
        with pytest.raises(InvalidRequest) as e:
            userpath.check(str(p), "save file")
        msg = str(e.value)
        assert "\n" not in msg and str(p) in msg and "not a regular file" in msg, kind
        after = os.lstat(p)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode), kind
    assert (tmp_path / "root-file").read_text() == "precious\n"


@pytest.mark.parametrize("path, words", [("", "name is required"), ("rel/x", "absolute path"),
                                         ("/no/such/dir/x", "does not exist"), ("/tmp/a\x00b", "NUL")])
def test_bad_paths(path, words):
    with pytest.raises(InvalidRequest, match=words):
        userpath.check(path, "core file")


def test_a_precreated_world_writable_file_is_replaced_not_written_through(tmp_path):
    target = tmp_path / "core"
    target.write_text("old")
    os.chmod(target, 0o666)
    hard = tmp_path / "hardlink"
    os.link(target, hard)            # e.g. a hard link to someone's file
    path = userpath.check(str(target), "core file")
    fd, tmp = userpath.create_temp(path)
    os.write(fd, b"guest memory")
    os.close(fd)
    userpath.commit(tmp, path, "core file")
    st = os.stat(target)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert target.read_bytes() == b"guest memory"
    assert hard.read_text() == "old"          # the other name still holds the old data
    assert not os.path.exists(tmp)


def test_temp_files_are_0600_beside_the_target(tmp_path):
    os.umask(0)
    try:
        fd, tmp = userpath.create_temp(str(tmp_path / "x"))
    finally:
        os.umask(0o022)
    os.close(fd)
    assert os.path.dirname(tmp) == str(tmp_path)
    assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o600


@pytest.mark.parametrize("kind", ["chardev", "fifo", "symlink", "dir"])
def test_commit_refuses_what_appeared_meanwhile(tmp_path, kind):
    target = tmp_path / kind
    path = userpath.check(str(target), "save file")
    fd, tmp = userpath.create_temp(path)
    os.close(fd)
    if kind == "chardev":
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to("/etc/passwd")
    else:
        target.mkdir()
    with pytest.raises(InvalidRequest, match="not a regular file"):
        userpath.commit(tmp, path, "save file")
    assert os.path.exists(tmp) and not stat.S_ISREG(os.lstat(target).st_mode)
