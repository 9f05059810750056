"""The one rule for files xend writes where a user names the path.

``xm save FILE`` and ``xm dump-core FILE`` (and their API calls) make xend,
running as root, write a file the caller chose.  Done naively that lets a
caller -- or a hostile local user who pre-creates something at that path --
turn xend against the host: ``/dev/null`` or a FIFO replaced by a 77 MB
file, a symlink followed onto a root-owned file, guest memory written into
another user's pre-created 0666 file with its mode.  So every such writer
goes through here:

* the path must be absolute, in an existing directory, and must not exist
  as anything but a regular file: a symlink, directory, FIFO, socket,
  character *or block* device is refused with one line.  Block devices
  are refused too, on purpose: writing a guest image onto a disk is a
  ``dd`` the admin can run, not something a typo in a file name should
  do;
* the data goes to a new temporary file (``O_EXCL``, mode 0600) in the
  target's own directory, and only when complete is it renamed over the
  target.  A rename replaces the directory entry -- never writes through a
  symlink or hard link, never keeps a pre-created file's mode -- and a
  failure leaves whatever was at the target untouched;
* right before the rename the target is checked again, so something put
  there while the data was being written is not replaced either.
"""

from __future__ import annotations

import os
import stat
import tempfile

from .errors import InvalidRequest

__all__ = ["check", "create_temp", "commit", "kind_of"]

_KINDS = [(stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]


def kind_of(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _refusal(path: str, what: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Unable to create {what} {path}: {why}")


def _check_existing(path: str, what: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise _refusal(path, what, e.strerror) from None
    if not stat.S_ISREG(st.st_mode):
        raise _refusal(path, what, f"it exists and is {kind_of(st.st_mode)}, not a regular file "
                                   "(refused: only regular files are replaced)")


def check(path, what: str) -> str:
    """The normalized *path*, if xend may write *what* ("save file", "core
    file") there; else InvalidRequest with one line saying why."""
    if not isinstance(path, str) or not path:
        raise InvalidRequest(f"a {what} name is required")
    if "\x00" in path:
        raise InvalidRequest(f"{what} name contains a NUL byte")
    if not os.path.isabs(path):
        raise InvalidRequest(f"{what} must be an absolute path, got {path!r}")
    path = os.path.normpath(path)
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        raise _refusal(path, what, f"directory {d} does not exist")
    _check_existing(path, what)
    if not os.access(d, os.W_OK):
        raise _refusal(path, what, f"directory {d} is not writable")
    return path


def create_temp(target: str, suffix: str = ".pyxen-tmp") -> tuple[int, str]:
    """A new, empty, 0600 file beside *target* (same directory, so the
    final rename is atomic): its descriptor and path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=suffix,
                               dir=os.path.dirname(target))
    os.fchmod(fd, 0o600)      # mkstemp's mode already; said here because it is the rule
    return fd, tmp


def commit(tmp: str, target: str, what: str) -> None:
    """Rename the finished *tmp* over *target*, unless *target* has become
    something other than a regular file meanwhile (then InvalidRequest,
    and *tmp* is left for the caller to remove)."""
    _check_existing(target, what)
    os.replace(tmp, target)
