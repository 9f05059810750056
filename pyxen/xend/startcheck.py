"""What ``xend check-config`` checks, and ``xend start``/``restart`` before
they start (or stop) anything: the xend-config.sxp a new xend would run
with, and what it needs from the host.

Errors are what would stop the new xend (a bad file, a missing script, a
certificate it cannot load): ``xend restart`` finds them before it stops
the running daemon, so a bad edit never leaves the host without one.
Warnings are what the old xend only wrote to xend.log (a misspelt or
inert option): they are printed on stderr at the moment they matter.
"""

from __future__ import annotations

import re

from ..config.xendconfig import XendConfig, XendConfigError
from ..net import scripts
from ..paths import Paths
from ..pki import PkiError, TlsFiles
from . import confine, nbdtls, vnctls
from .errors import XendError


def _script_problem(setting: str, what: str, paths: Paths) -> str | None:
    try:
        name, _ = scripts.split(setting)
        if "/" not in name and name in scripts.BUILTIN and not (paths.scripts / name).exists():
            return None     # shipped: xend lays it out in etc/xen/scripts at start
        scripts.resolve(name, paths.scripts)
    except scripts.ScriptError as e:
        return f"({what} {setting}): {e}"
    return None


def check(paths: Paths) -> tuple[list[str], list[str], XendConfig | None]:
    """(errors, warnings, config) for the config at ``paths.xend_config``."""
    try:
        cfg = XendConfig.load(paths.xend_config)
    except XendConfigError as e:
        return [str(e)], [], None
    errors: list[str] = []
    warnings = cfg.warnings()
    # QEMU's confinement: a real account inside the uid range would hand
    # every QEMU that account's files (xend/confine.py).
    c_err, c_warn = confine.check_config(cfg)
    errors += c_err
    warnings += c_warn
    for opt in ("network-script", "vif-script"):
        if cfg[opt]:
            problem = _script_problem(cfg[opt], opt, paths)
            if problem:
                errors.append(problem)
    if cfg["xend-http-server"] and (cfg["xend-http-auth"] == "cert" or cfg["xend-http-tls"]):
        files = TlsFiles.for_host(paths.etc, cfg["xend-http-ssl-cert-file"], cfg["xend-http-ssl-key-file"],
                                  cfg["xend-http-ca-file"])
        try:
            files.server_context(verify_clients=cfg["xend-http-auth"] == "cert")
        except PkiError as e:
            opt = "xend-http-auth cert" if cfg["xend-http-auth"] == "cert" else "xend-http-tls"
            errors.append(f"HTTPS API ({opt}): {e}")
    if cfg["xend-relocation-server"]:
        for pattern in cfg["xend-relocation-hosts-allow"].split():
            try:
                re.compile(pattern)
            except re.error as e:
                errors.append(f"(xend-relocation-hosts-allow): bad regular expression {pattern!r}: {e}")
        try:
            nbdtls.parse_ports(cfg["xend-relocation-nbd-ports"])
        except XendError as e:
            errors.append(str(e))
        if cfg["xend-relocation-tls"]:
            files = TlsFiles.for_host(paths.etc, cfg["xend-relocation-server-ssl-cert-file"],
                                      cfg["xend-relocation-server-ssl-key-file"], cfg["xend-relocation-ca-file"])
            try:
                files.server_context()
            except PkiError as e:
                errors.append(f"relocation server: {e}")
    if cfg["vnc-tls"]:
        try:
            vnctls.sources(cfg, paths.etc)
        except XendError as e:
            errors.append(str(e))
    return errors, warnings, cfg
