"""pyxen.pki and ``pyxen ca``/``pyxen cert``: host and API-client certificates,
the server context's client verification, and the HTTPS API's config and
OpenAPI bits (no xend: tests/system/test_api_tls.py has the real one)."""

from __future__ import annotations

import asyncio
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pyxen import cli, pki
from pyxen.config.xendconfig import XendConfig
from pyxen.xend import apispec, httptls
from pyxen.xend.errors import XendError


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def _eku(cert):
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def ca(tmp_path):
    d = tmp_path / "pki"
    pki.make_ca(d)
    pki.make_host_cert(d, "localhost", ["127.0.0.1"])
    return d


def test_client_cert_is_client_auth_only(ca, tmp_path):
    out = tmp_path / "alice"
    path = pki.make_client_cert(ca, "alice", out)
    assert path == out / pki.CLIENT_CERT
    cert = _cert(path)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "alice"
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.issuer == _cert(ca / pki.CA_CERT).subject
    assert (out / pki.CLIENT_KEY).stat().st_mode & 0o777 == 0o600
    assert (out / pki.CA_CERT).read_bytes() == (ca / pki.CA_CERT).read_bytes()
    # The host's own files are untouched; a host certificate keeps both usages.
    assert _eku(_cert(ca / pki.HOST_CERT)) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not (ca / pki.CLIENT_CERT).exists()


def test_client_cert_refusals(ca, tmp_path):
    with pytest.raises(pki.PkiError, match="invalid client name"):
        pki.make_client_cert(ca, "bad name", tmp_path / "x")
    with pytest.raises(pki.PkiError, match="host's own pki directory"):
        pki.make_client_cert(ca, "alice", ca)
    with pytest.raises(pki.PkiError, match="pyxen ca"):
        pki.make_client_cert(tmp_path / "nothing", "alice", tmp_path / "y")


def test_cli_cert_client(ca, tmp_path, monkeypatch, capsys):
    root = tmp_path / "root"
    (root / "etc/xen").mkdir(parents=True)
    (root / "etc/xen/pki").symlink_to(ca)
    monkeypatch.setenv("PYXEN_ROOT", str(root))
    out = tmp_path / "bob"
    assert cli.main(["cert", "bob", "--client", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / pki.CLIENT_CERT)
    with pytest.raises(SystemExit) as e:
        cli.main(["cert", "bob", "--client"])
    assert e.value.code == 2 and "needs --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["cert", "bob", "--client", "--out", str(out), "--ip", "10.0.0.1"])
    assert "for host certificates" in capsys.readouterr().err


def test_check_names_missing_file_and_command(tmp_path):
    files = pki.TlsFiles.for_host(tmp_path)
    with pytest.raises(pki.PkiError, match=r"ca-cert.pem does not exist \(create the CA with `pyxen ca`"):
        files.check()
    with pytest.raises(pki.PkiError, match=r"host-cert.pem does not exist \(make them with `pyxen cert NAME"):
        files.check(need_ca=False)


def _handshake(server_ctx, client_ctx):
    """One TLS handshake over a socketpair; the server's exception (or None)."""
    import socket
    a, b = socket.socketpair()
    result = {}

    def serve():
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.recv(1)
            result["err"] = None
        except (ssl.SSLError, OSError) as e:
            result["err"] = e
    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname="localhost") as c:
            c.sendall(b"x")
            c.recv(1)
    except (ssl.SSLError, OSError):
        pass
    t.join(10)
    return result["err"]


def _client_ctx(ca_file, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def test_server_context_verifies_clients(ca, tmp_path):
    srv = pki.TlsFiles(ca / pki.CA_CERT, ca / pki.HOST_CERT, ca / pki.HOST_KEY)
    pki.make_client_cert(ca, "alice", tmp_path / "alice")
    other = tmp_path / "other"
    pki.make_ca(other, "another CA")
    pki.make_client_cert(other, "mallory", tmp_path / "mallory")

    good = _client_ctx(ca / pki.CA_CERT, tmp_path / "alice/client-cert.pem", tmp_path / "alice/client-key.pem")
    assert _handshake(srv.server_context(), good) is None
    err = _handshake(srv.server_context(), _client_ctx(ca / pki.CA_CERT))
    assert httptls.refusal(err) == "no client certificate"
    err = _handshake(srv.server_context(), _client_ctx(ca / pki.CA_CERT, tmp_path / "mallory/client-cert.pem",
                                                       tmp_path / "mallory/client-key.pem"))
    assert httptls.refusal(err).startswith("client certificate not trusted")
    # Token mode: HTTPS without client certificates, no CA file needed.
    no_ca = pki.TlsFiles(tmp_path / "missing.pem", ca / pki.HOST_CERT, ca / pki.HOST_KEY)
    assert _handshake(no_ca.server_context(verify_clients=False), _client_ctx(ca / pki.CA_CERT)) is None
    # A client certificate cannot serve: it lacks serverAuth.
    as_server = pki.TlsFiles(ca / pki.CA_CERT, tmp_path / "alice/client-cert.pem", tmp_path / "alice/client-key.pem")
    assert _handshake(as_server.server_context(verify_clients=False), _client_ctx(ca / pki.CA_CERT)) is not None


def test_https_config_and_errors(tmp_path):
    assert httptls.context(XendConfig.parse("(xend-http-auth token)"), tmp_path) is None
    for text, what in (("(xend-http-auth cert)", "xend-http-auth cert"),
                       ("(xend-http-tls yes)", "xend-http-tls")):
        with pytest.raises(XendError) as e:
            httptls.context(XendConfig.parse(text), tmp_path)
        assert str(e.value).startswith(f"HTTPS API ({what}): TLS ")
        assert "\n" not in str(e.value) and "pyxen" in str(e.value)
    pki.make_ca(tmp_path / "pki")
    pki.make_host_cert(tmp_path / "pki", "localhost")
    ctx = httptls.context(XendConfig.parse("(xend-http-auth cert)"), tmp_path)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    ctx = httptls.context(XendConfig.parse("(xend-http-tls yes)"), tmp_path)
    assert ctx.verify_mode == ssl.CERT_NONE
    with pytest.raises(Exception, match="expected one of token, cert, none"):
        XendConfig.parse("(xend-http-auth certificate)")


def test_openapi_describes_mutual_tls():
    plain = apispec.openapi()
    assert "token" in plain["components"]["securitySchemes"] and "x-mutualTLS" not in plain
    doc = apispec.openapi(client_certs=True)
    assert doc["openapi"] == "3.0.3" and doc["security"] == []
    assert doc["x-mutualTLS"]["type"] == "mutualTLS"
    assert "pyxen cert NAME --client" in doc["info"]["description"]
    assert all("security" not in o for m in doc["paths"].values() for o in m.values())


def test_refusal_words():
    assert httptls.refusal(asyncio.TimeoutError()).startswith("no TLS handshake within")
    assert httptls.refusal(ConnectionResetError()) == "connection closed during the TLS handshake"
