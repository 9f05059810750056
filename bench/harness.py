"""What every benchmark's fixture shares: set up in ``start()``, always torn
down by ``close()`` (even when ``start()`` failed half-way or the run was
interrupted), and the last-resort sweep of QEMUs a run's root left behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path


class Harness:
    """A context manager around ``start()``/``close()``; ``close()`` must
    cope with a partial ``start()``."""

    def start(self) -> None:
        pass

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()


def qemus_under(root: Path) -> list[int]:
    """PIDs of QEMUs whose command line names a path under *root*."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and f"{root}/".encode() in cmd:
                pids.append(int(d.name))
    return pids


def kill_qemus_under(root: Path) -> None:
    """The last resort of every close(): normally there are none."""
    for pid in qemus_under(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
