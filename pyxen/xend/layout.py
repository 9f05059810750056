"""Laying out a fresh PYXEN_ROOT: directories, default xend-config.sxp, the
network and vif scripts, and the example domain configs, adapted to boot
the default guest image."""

from __future__ import annotations

import logging
from importlib import resources

from ..config.xendconfig import default_file_text
from ..net import scripts
from ..paths import Paths
from ..fileutil import atomic_write

log = logging.getLogger("pyxen.layout")

EXAMPLES = ("xmexample1", "xmexample2", "xmexample.hvm", "xmexample.vmx")


def ensure(paths: Paths) -> None:
    for d in paths.layout():
        d.mkdir(parents=True, exist_ok=True)
    paths.run.chmod(0o700)
    paths.state.chmod(0o700)
    if not paths.xend_config.exists():
        atomic_write(paths.xend_config, default_file_text().encode(), 0o644)
        log.info("wrote default %s", paths.xend_config)
    for name in EXAMPLES:
        dest = paths.etc / name
        if dest.exists():
            continue
        text = resources.files("pyxen.data.examples").joinpath(name).read_text()
        atomic_write(dest, text.replace("@IMAGES@", str(paths.images)).encode(), 0o644)
    written = scripts.install(paths.scripts)
    if written:
        log.info("installed scripts in %s: %s", paths.scripts, " ".join(written))
