"""A domain's console log, kept to a size: rotation as libvirt's virtlogd.

QEMU appends everything the guest prints on its serial port to
``var/log/xen/console/guest-<name>.log`` (the chardev's ``logfile=``,
opened ``O_APPEND``).  A guest printing without end would fill the host
disk, so xend, which reads every byte of that output anyway (the console
relay), checks the file's size every ``CHECK_EVERY`` bytes and, past
``console-log-max-size``, rotates it: ``.1`` becomes ``.2`` and so on,
the file is copied to ``.1`` and truncated in place.  Copy-and-truncate
rather than rename because QEMU keeps the file open: with ``O_APPEND`` its
next write lands at the new end, offset 0.  ``console-log-max-files``
counts the current file too (3: the file, ``.1`` and ``.2``).

While xend is stopped nothing rotates (QEMU keeps appending); the first
output after xend adopts the domain again brings the file back in bounds.
"""

from __future__ import annotations

import logging
import os
import shutil

log = logging.getLogger("pyxen.console")

__all__ = ["ConsoleLog", "CHECK_EVERY"]

CHECK_EVERY = 64 * 1024       # bytes of output between two size checks


class ConsoleLog:
    def __init__(self, path, max_bytes: int = 2 << 20, files: int = 3):
        self.path = str(path)
        self.max_bytes = max(4096, max_bytes)
        self.files = max(1, files)
        self._since = CHECK_EVERY     # check at the first output (after an xend restart)

    def wrote(self, n: int) -> None:
        """The guest printed *n* more bytes (QEMU has logged them)."""
        self._since += n
        if self._since >= CHECK_EVERY:
            self._since = 0
            self.check()

    def check(self) -> None:
        try:
            if os.stat(self.path).st_size > self.max_bytes:
                self.rotate()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("console log %s: cannot rotate: %s", self.path, e.strerror)

    def rotate(self) -> None:
        if self.files == 1:
            os.truncate(self.path, 0)
            return
        for i in range(self.files - 1, 1, -1):
            older = f"{self.path}.{i - 1}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{i}")
        tmp = f"{self.path}.1.tmp"
        shutil.copyfile(self.path, tmp)
        os.chmod(tmp, 0o640)
        os.replace(tmp, f"{self.path}.1")
        os.truncate(self.path, 0)
