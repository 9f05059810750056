"""A host's xend state as tests and tools see it: through the store API,
never by file path, so they keep working whatever the store's layout (or
backend) becomes.

Each function opens the store of the host rooted at *root* (``PYXEN_ROOT``)
for one look and closes it again; read-only unless asked otherwise, so a
running xend is never disturbed.  Writing (to plant a fault, with xend
stopped) goes through :func:`open_store` with ``writable=True``.
"""

from __future__ import annotations

from pathlib import Path

from .. import storekeys
from ..filestore import FileStore
from ..paths import Paths


def open_store(root: Path, writable: bool = False) -> FileStore:
    return FileStore(Paths(Path(root)).state, read_only=not writable)


def _look(root: Path, fn, empty):
    if not (Paths(Path(root)).state / ".lock").exists():
        return empty            # xend never opened a store here
    with open_store(root) as st:
        return fn(st)


def keys(root: Path, prefix: str = "") -> list[str]:
    return _look(root, lambda st: st.keys(prefix), [])


def runtime_records(root: Path) -> list[str]:
    """The keys of the runtime records of domains on this host."""
    return _look(root, lambda st: st.keys(storekeys.runtime_prefix(st.host)), [])


def domain_records(root: Path) -> list[str]:
    """Every key of a domain's state: its config and its runtime record
    (two per domain that exists)."""
    return _look(root, lambda st: st.keys(storekeys.CONFIG_PREFIX) +
                 st.keys(storekeys.runtime_prefix(st.host)), [])


def get_json(root: Path, key_of, default=None):
    """The JSON value of the key ``key_of(host)`` builds (a host-scoped
    builder such as :func:`pyxen.storekeys.accel_probe`), or of *key_of*
    itself when it is a string."""
    return _look(root, lambda st: st.get_json(key_of if isinstance(key_of, str) else key_of(st.host),
                                              default), default)


def get(root: Path, key: str) -> bytes | None:
    return _look(root, lambda st: st.get(key), None)


def quarantined(root: Path) -> list[str]:
    """What the store set aside as corrupt."""
    return _look(root, lambda st: st.quarantined(), [])
