"""Every filesystem location pyxen uses, relative to ``PYXEN_ROOT``.

``PYXEN_ROOT`` (default ``/``) relocates the whole host: two xend instances
with different roots share nothing but the read-only default guest image,
which lives in ``PYXEN_IMAGES`` (default ``/var/lib/pyxen/images``) because
building it is expensive and it is the same for every xend on a machine.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_IMAGES = "/var/lib/pyxen/images"


class Paths:
    # A plain immutable class, not a dataclass: every xm command builds one,
    # and importing dataclasses (inspect, ast, dis, ...) costs xm several ms.
    __slots__ = ("root",)

    def __init__(self, root: Path):
        object.__setattr__(self, "root", root)

    def __setattr__(self, name, value):
        raise AttributeError(f"Paths is immutable (cannot set {name!r})")

    def __eq__(self, other):
        return self.root == other.root if isinstance(other, Paths) else NotImplemented

    def __hash__(self):
        return hash(self.root)

    def __repr__(self):
        return f"Paths(root={self.root!r})"

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "Paths":
        env = os.environ if environ is None else environ
        return cls(Path(env.get("PYXEN_ROOT") or "/").resolve())

    def _p(self, rel: str) -> Path:
        return self.root / rel

    # --- etc/xen: configuration written by the administrator
    @property
    def etc(self) -> Path:
        return self._p("etc/xen")

    @property
    def xend_config(self) -> Path:
        env = os.environ.get("XEND_CONFIG")
        return Path(env) if env else self.etc / "xend-config.sxp"

    @property
    def auto(self) -> Path:
        return self.etc / "auto"

    @property
    def scripts(self) -> Path:
        return self.etc / "scripts"

    # --- var/lib/pyxen: state that survives restarts
    @property
    def lib(self) -> Path:
        return self._p("var/lib/pyxen")

    @property
    def state(self) -> Path:
        return self.lib / "state"

    @property
    def save_dir(self) -> Path:
        return self.lib / "save"

    @property
    def snapshot_dir(self) -> Path:
        """Snapshots' memory state files, one directory per domain uuid."""
        return self.lib / "snapshots"

    @property
    def dump_dir(self) -> Path:
        return self._p("var/xen/dump")

    # --- var/run/pyxen: sockets and pids, gone after a host reboot
    @property
    def run(self) -> Path:
        return self._p("var/run/pyxen")

    @property
    def socket(self) -> Path:
        env = os.environ.get("XM_SERVER")
        return Path(env) if env else self.run / "xend.sock"

    @property
    def pidfile(self) -> Path:
        return self.run / "xend.pid"

    def checkout(self, key: str) -> Path:
        """Where state another program keeps as files (a vTPM's swtpm) is
        checked out of the store while it runs (the store keeps the copy
        that lasts; this one is gone after a host reboot)."""
        return self.run / "checkout" / key.replace("/", "_")

    def domain_run(self, domid: int) -> Path:
        # Keyed by domid (short) rather than uuid: unix socket paths are
        # limited to 107 bytes and PYXEN_ROOT may already be long.
        return self.run / "qemu" / str(domid)

    # --- var/log/xen
    @property
    def log(self) -> Path:
        return self._p("var/log/xen")

    @property
    def xend_log(self) -> Path:
        return self.log / "xend.log"

    @property
    def xend_debug_log(self) -> Path:
        return self.log / "xend-debug.log"

    @property
    def console_log_dir(self) -> Path:
        return self.log / "console"

    @property
    def images(self) -> Path:
        return Path(os.environ.get("PYXEN_IMAGES") or DEFAULT_IMAGES)

    @property
    def default_image(self) -> Path:
        return self.images / "default"

    def layout(self) -> list[Path]:
        """Directories xend creates on a fresh root."""
        return [self.etc, self.auto, self.lib, self.state, self.save_dir,
                self.run, self.run / "qemu", self.log, self.console_log_dir]
