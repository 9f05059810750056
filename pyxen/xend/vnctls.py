"""VNC over TLS (``vnc-tls``, ``vnc-x509-cert-dir``, ``vnc-x509-verify`` in
xend-config.sxp, as Xen 3.x had): the certificates an HVM domain's QEMU
serves its VNC display with.

QEMU's ``tls-creds-x509`` object reads a directory with fixed names:
``ca-cert.pem``, ``server-cert.pem`` and ``server-key.pem``.  They come
from ``vnc-x509-cert-dir`` (default ``<root>/etc/xen/vnc``) when it holds a
server certificate — Xen's own layout, so a Xen host's directory works
unchanged — or else from this host's certificate of the pool CA
(``pyxen ca``, ``pyxen cert NAME --ip ADDR``: ``etc/xen/pki``), which is a
serverAuth certificate already.

Each domain's QEMU gets its own copy in its run directory (``vnc-x509/``,
0700, the key 0600), owned by the user QEMU runs as (xend/confine.py):
an unprivileged QEMU can read its credentials whether it opens them before
or after dropping to that user, and never the host's own key file.  With
``vnc-x509-verify`` the client must show a certificate of the same CA
(``pyxen cert NAME --client --out DIR`` makes one).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..pki import CA_CERT, HOST_CERT, HOST_KEY, pki_dir
from . import confine
from .errors import XendError

SERVER_CERT, SERVER_KEY = "server-cert.pem", "server-key.pem"    # QEMU's names


def cert_dir(config, etc: Path) -> Path:
    return Path(config["vnc-x509-cert-dir"] or etc / "vnc")


def sources(config, etc: Path) -> dict[str, Path]:
    """QEMU's file name -> where it comes from on this host; XendError
    naming what is missing."""
    d = cert_dir(config, etc)
    if (d / SERVER_CERT).exists():
        src = {CA_CERT: d / CA_CERT, SERVER_CERT: d / SERVER_CERT, SERVER_KEY: d / SERVER_KEY}
    else:
        p = pki_dir(etc)
        src = {CA_CERT: p / CA_CERT, SERVER_CERT: p / HOST_CERT, SERVER_KEY: p / HOST_KEY}
    for name, path in src.items():
        if not path.is_file():
            raise XendError(f"(vnc-tls yes): {path} does not exist: put {SERVER_CERT}, {SERVER_KEY} and "
                            f"{CA_CERT} in {d}, or give this host a certificate of the pool CA "
                            "(`pyxen ca`, `pyxen cert NAME --ip ADDR`)")
    return src


def prepare(config, etc: Path, run_dir: Path, ident: tuple[int, int] | None) -> Path:
    """The domain's private copy of its VNC credentials; the directory."""
    src = sources(config, etc)
    out = run_dir / "vnc-x509"
    out.mkdir(mode=0o700, exist_ok=True)
    try:
        for name, path in src.items():
            confine.write_for_qemu(out / name, path.read_bytes(), ident)
        if ident is not None:
            os.chown(out, *ident)
    except OSError as e:
        raise XendError(f"(vnc-tls yes): cannot prepare the VNC certificates in {out}: {e.strerror or e}") from None
    return out
