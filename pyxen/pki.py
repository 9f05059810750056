"""The host CA and per-host certificates, and the TLS contexts built on them.

Xen 3.0 migrated domains in the clear and trusted any peer its
hosts-allow regexes let in (manual §9.3).  pyxen authenticates both ends of
a relocation (and, when asked, the TCP HTTP API) with X.509: one CA per
pool of hosts, one certificate per host that serves as both server and
client certificate.  The files live in ``etc/xen/pki``:

==================  ======  ============================================
file                mode    what
==================  ======  ============================================
``ca-cert.pem``     0644    the pool's CA: the only trust anchor
``ca-key.pem``      0600    the CA's key; only on the host that issues
``host-cert.pem``   0644    this host's certificate (signed by the CA)
``host-key.pem``    0600    its key
==================  ======  ============================================

``pyxen ca`` makes the CA; ``pyxen cert NAME --ip ADDR`` issues a host
certificate (for this host or, with ``--out DIR``, for another one to copy
over).  ``pyxen cert NAME --client --out DIR`` issues a certificate for a
user of the HTTP API (``(xend-http-auth cert)``): ``client-cert.pem`` and
``client-key.pem`` beside a copy of ``ca-cert.pem``, good for TLS client
authentication only, so it can never pose as a host.  ``pyxen cert NAME
--etcd --ip ADDR --out DIR`` issues an etcd member's certificate
(``etcd-cert.pem``/``etcd-key.pem``), good as its server certificate to
clients and as both ends of its peer connections; xend authenticates to
etcd with its own host certificate (docs/cluster.md).  Keys are ECDSA
P-256: small, and a handshake costs well under a millisecond.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from .fileutil import atomic_write

CA_CERT, CA_KEY = "ca-cert.pem", "ca-key.pem"
HOST_CERT, HOST_KEY = "host-cert.pem", "host-key.pem"
CLIENT_CERT, CLIENT_KEY = "client-cert.pem", "client-key.pem"
ETCD_CERT, ETCD_KEY = "etcd-cert.pem", "etcd-key.pem"
VALID_DAYS = 3650


class PkiError(Exception):
    """A missing, unreadable or invalid certificate or key; the message says which."""


def pki_dir(etc: Path) -> Path:
    return etc / "pki"


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pyxen"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path, cn: str = "pyxen host CA", force: bool = False) -> Path:
    """Create the CA in *directory*; refuses to replace one unless *force*."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_CERT).exists() and not force:
        raise PkiError(f"{directory / CA_CERT} already exists (use --force to replace the CA: "
                       "every host certificate it issued stops being trusted)")
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    # The key first: a CA certificate without its key would be useless.
    atomic_write(directory / CA_KEY, _pem_key(key), 0o600)
    atomic_write(directory / CA_CERT, _pem_cert(cert), 0o644)
    return directory / CA_CERT


def _load_ca(directory: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError as e:
        raise PkiError(f"no CA here: {e.filename} does not exist (create one with `pyxen ca`)") from None
    except (ValueError, TypeError) as e:
        raise PkiError(f"the CA in {directory} is unreadable: {e}") from None
    return cert, key


def _issue(ca_dir: Path, name: str, sans: list, usages: list, out: Path,
           cert_file: str, key_file: str) -> Path:
    """Sign a certificate for *name* with the CA in *ca_dir*; write it, its key
    and (when *out* is elsewhere) the CA certificate into *out*."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    ca_cert, ca_key = _load_ca(ca_dir)
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(_name(name)).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = (b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / key_file, _pem_key(key), 0o600)
    atomic_write(out / cert_file, _pem_cert(cert), 0o644)
    if out.resolve() != ca_dir.resolve():
        atomic_write(out / CA_CERT, _pem_cert(ca_cert), 0o644)
    return out / cert_file


def _check_name(name: str, what: str) -> None:
    if not name or any(c.isspace() for c in name):
        raise PkiError(f"invalid {what} name {name!r}")


def make_host_cert(ca_dir: Path, name: str, ips: list[str] = (), dns: list[str] = (),
                   out: Path | None = None) -> Path:
    """Issue a certificate for host *name* (also valid for *ips* and *dns*
    names), signed by the CA in *ca_dir*; written with the CA certificate
    into *out* (default *ca_dir*)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID
    _check_name(name, "host")
    sans: list = []
    for n in [name, *dns]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    sans += _ip_sans(ips)
    # One certificate per host, used both to serve (a migration arriving,
    # the HTTPS API) and as a client (a migration leaving).
    return _issue(ca_dir, name, sans, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                  out or ca_dir, HOST_CERT, HOST_KEY)


def _ip_sans(ips: list[str]) -> list:
    """Subject alternative names for the --ip addresses (each must be one)."""
    from cryptography import x509
    out = []
    for ip in ips:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiError(f"--ip {ip}: not an IP address") from None
    return out


def make_etcd_cert(ca_dir: Path, name: str, ips: list[str], out: Path, dns: list[str] = ()) -> Path:
    """Issue etcd member *name*'s certificate for the addresses *ips* (its
    client and peer URLs' hosts): serverAuth for clients and for peers that
    dial it, clientAuth for dialing its peers (``--peer-client-cert-auth``)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID
    _check_name(name, "etcd member")
    if not ips:
        raise PkiError("an etcd certificate needs --ip (the member's client and peer addresses)")
    sans: list = [x509.DNSName(n) for n in [name, *dns]]
    sans += _ip_sans(ips)
    return _issue(ca_dir, name, sans, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                  out, ETCD_CERT, ETCD_KEY)


def make_client_cert(ca_dir: Path, name: str, out: Path) -> Path:
    """Issue a certificate for API user *name* (its common name), signed by
    the CA in *ca_dir*, into *out* as client-cert.pem / client-key.pem with
    the CA certificate.  clientAuth only: TLS refuses it as a server's
    certificate, so a user's certificate cannot impersonate a host."""
    from cryptography.x509.oid import ExtendedKeyUsageOID
    _check_name(name, "client")
    if out.resolve() == ca_dir.resolve():
        raise PkiError(f"--out {out}: that is the host's own pki directory; give the user's own directory")
    return _issue(ca_dir, name, [], [ExtendedKeyUsageOID.CLIENT_AUTH], out, CLIENT_CERT, CLIENT_KEY)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def for_host(cls, etc: Path, cert: str = "", key: str = "", ca: str = "") -> "TlsFiles":
        d = pki_dir(etc)
        return cls(Path(ca) if ca else d / CA_CERT, Path(cert) if cert else d / HOST_CERT,
                   Path(key) if key else d / HOST_KEY)

    def check(self, need_ca: bool = True) -> None:
        make_ca = "create the CA with `pyxen ca`, or copy the pool's ca-cert.pem there"
        make_cert = "make them with `pyxen cert NAME --ip ADDR`"
        for what, p, how in (("CA certificate", self.ca, make_ca), ("host certificate", self.cert, make_cert),
                             ("host key", self.key, make_cert)):
            if what.startswith("CA") and not need_ca:
                continue
            if not p.is_file():
                raise PkiError(f"TLS {what} {p} does not exist ({how})")
            if not os.access(p, os.R_OK):
                raise PkiError(f"TLS {what} {p} is not readable")

    def _context(self, purpose, verify: bool = True) -> ssl.SSLContext:
        self.check(need_ca=verify)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH
                             else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            if verify:
                ctx.load_verify_locations(cafile=str(self.ca))
            ctx.load_cert_chain(str(self.cert), str(self.key))
        except (ssl.SSLError, OSError) as e:
            files = ", ".join(str(f) for f in ((self.cert, self.key, self.ca) if verify else (self.cert, self.key)))
            raise PkiError(f"cannot load TLS files ({files}): {e}") from None
        # Both ends prove who they are: the CA is the pool's only trust anchor.
        ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        return ctx

    def server_context(self, verify_clients: bool = True) -> ssl.SSLContext:
        """A server's context; with *verify_clients* (relocation, the API's
        cert mode) every client must show a certificate signed by the CA,
        without it (HTTPS with a bearer token) only the server shows one and
        the CA file is not needed."""
        ctx = self._context(ssl.Purpose.CLIENT_AUTH, verify_clients)
        # No session tickets: nothing arrives unasked on a connection that
        # afterwards carries a strict request/reply protocol.
        ctx.num_tickets = 0
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = self._context(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = True    # the target must be the host we asked for
        return ctx


def is_host_cert(der: bytes | None) -> bool:
    """Whether a (verified) peer certificate is a host's — it may serve
    (serverAuth) — and not an API user's client-only certificate."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID
    if not der:
        return False
    try:
        eku = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except (ValueError, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.SERVER_AUTH in eku.value


def peer_name(sock: ssl.SSLSocket) -> str:
    """The common name of the peer's (verified) certificate."""
    return subject_cn(sock.getpeercert())


def subject_cn(cert: dict | None) -> str:
    """The common name in a certificate as ``getpeercert()`` returns it."""
    for rdn in (cert or {}).get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return "?"
