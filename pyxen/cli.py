"""``pyxen``: host administration that is not a domain operation.

    pyxen ca [--cn NAME] [--force]
        create this pool's CA in <root>/etc/xen/pki
    pyxen cert NAME [--ip ADDR]... [--dns NAME]... [--out DIR]
        issue a host certificate signed by that CA; without --out it is this
        host's own, with --out DIR it is written (with the CA certificate) to
        DIR for copying to host NAME's etc/xen/pki
    pyxen cert NAME --client --out DIR
        issue a certificate for user NAME of the HTTP API ((xend-http-auth
        cert)): DIR/client-cert.pem, DIR/client-key.pem and the CA's
        DIR/ca-cert.pem, valid for TLS client authentication only

Relocation (xm migrate) checks both hosts' certificates against the CA
and the target's name against the address it was asked for: give every
address other hosts use to reach it as --ip or --dns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import pki
from .paths import Paths


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="pyxen", description="pyxen host administration")
    sub = p.add_subparsers(dest="cmd", required=True)
    ca = sub.add_parser("ca", help="create the pool's certificate authority")
    ca.add_argument("--cn", default="pyxen host CA", help="the CA's common name")
    ca.add_argument("--force", action="store_true", help="replace an existing CA")
    cert = sub.add_parser("cert", help="issue a host (or, with --client, an API user's) certificate")
    cert.add_argument("name", help="the host's name (its certificate's common name)")
    cert.add_argument("--ip", action="append", default=[], help="an address the host is reached at")
    cert.add_argument("--dns", action="append", default=[], help="another DNS name of the host")
    cert.add_argument("--out", type=Path, help="write here instead of this host's etc/xen/pki")
    cert.add_argument("--client", action="store_true",
                      help="a client certificate for an HTTP API user named NAME (needs --out)")
    cert.add_argument("--etcd", action="store_true",
                      help="an etcd member's server and peer certificate for the --ip addresses (needs --out)")
    a = p.parse_args(argv)
    d = pki.pki_dir(Paths.from_env().etc)
    try:
        if a.cmd == "ca":
            path = pki.make_ca(d, a.cn, a.force)
        elif a.etcd:
            if a.out is None:
                p.error("cert --etcd needs --out DIR (the member's own directory)")
            if a.client:
                p.error("cert: --etcd and --client are different certificates")
            path = pki.make_etcd_cert(d, a.name, a.ip, a.out, a.dns)
        elif a.client:
            if a.out is None:
                p.error("cert --client needs --out DIR (the user's certificate is not this host's)")
            if a.ip or a.dns:
                p.error("cert --client: --ip and --dns are for host certificates")
            path = pki.make_client_cert(d, a.name, a.out)
        else:
            path = pki.make_host_cert(d, a.name, a.ip, a.dns, a.out)
    except pki.PkiError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"Error: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
