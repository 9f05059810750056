"""qcow2 internal snapshots of an image no QEMU has open (``qemu-img
snapshot``): apply one (a snapshot revert restarts QEMU on the reverted
image), delete one, list them; and the qcow2 overlay a raw image gets
before its first snapshot, merged back into it when the disk is detached.  A running QEMU's images are snapshotted
and pruned through its monitor instead (QMP blockdev-snapshot-*-internal-sync).
"""

from __future__ import annotations

import json
import os
import subprocess

QEMU_IMG_TIMEOUT = 300.0


class Qcow2Error(Exception):
    pass


def _run(*args: str) -> str:
    try:
        res = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Qcow2Error(f"qemu-img {args[0]}: {e}") from None
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines() or [f"exit status {res.returncode}"]
        raise Qcow2Error(lines[-1].removeprefix("qemu-img: "))
    return res.stdout


def snapshot_names(path: str) -> list[str]:
    """The tags of *path*'s internal snapshots."""
    info = json.loads(_run("info", "--force-share", "--output=json", "-f", "qcow2", path))
    return [s.get("name", "") for s in info.get("snapshots", [])]


def _opts(path: str) -> str:
    # qemu-img snapshot has no -f: the format is named in --image-opts, so
    # nothing is probed (commas in a path are doubled, QEMU's escape).
    return "driver=qcow2,file.driver=file,file.filename=" + path.replace(",", ",,")


def create_overlay(path: str, base: str) -> None:
    """A new qcow2 image at *path* over the raw image *base* (its backing
    file, named by absolute path with its format, so nothing is probed)."""
    _run("create", "-q", "-f", "qcow2", "-F", "raw", "-b", os.path.abspath(base), path)


def apply(path: str, tag: str) -> None:
    """Make *path*'s active state that of its snapshot *tag*."""
    _run("snapshot", "-q", "--image-opts", "-a", tag, _opts(path))


def delete(path: str, tag: str) -> None:
    """Drop snapshot *tag* of *path* (its clusters are freed once nothing else refers to them)."""
    _run("snapshot", "-q", "--image-opts", "-d", tag, _opts(path))


def commit(path: str) -> None:
    """Write overlay *path*'s data into its backing file (the raw base) and
    leave the overlay empty (``qemu-img commit``; no QEMU has either open)."""
    _run("commit", "-q", "--image-opts", _opts(path))
