"""The storage migration's NBD channel (xend/nbdtls.py): the key files
QEMU reads and the gnutls priority work with this host's QEMU — checked
with qemu-nbd and qemu-img, the same TLS-PSK code as the QEMUs — and only
the right key gets in; the port option is parsed and checked."""

from __future__ import annotations

import socket
import stat
import subprocess

import pytest

from pyxen.testing.wait import poll
from pyxen.xend import nbdtls
from pyxen.xend.errors import InvalidRequest


def test_ports_option():
    assert nbdtls.parse_ports("") is None
    assert nbdtls.parse_ports("49152-49154") == range(49152, 49155)
    assert nbdtls.parse_ports("5000") == range(5000, 5001)
    for bad in ("9-1", "0-10", "a-b", "1-70000"):
        with pytest.raises(InvalidRequest, match="xend-relocation-nbd-ports"):
            nbdtls.parse_ports(bad)


def test_listen_takes_a_free_port_of_the_range_or_says_none_is_free():
    taken = nbdtls._listen("127.0.0.1", None)
    port = taken.getsockname()[1]
    try:
        s = nbdtls._listen("127.0.0.1", range(port, port + 2))
        assert s.getsockname()[1] == port + 1 or port + 1 > 65535
        s.close()
        with pytest.raises(InvalidRequest, match="no free port"):
            nbdtls._listen("127.0.0.1", range(port, port + 1))
    finally:
        taken.close()


def test_key_file_is_private_and_in_qemus_format(tmp_path):
    user, key = nbdtls.new_key()
    rel = nbdtls._write_keys(tmp_path, nbdtls.CLIENT_DIR, user, key, None)
    f = tmp_path / rel / nbdtls.KEYS
    assert f.read_text() == f"{user}:{key}\n"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / rel).stat().st_mode) == 0o700
    assert len(key) == 64 and user != nbdtls.new_key()[0]


def _img_info(port: int, creds_dir, user: str) -> subprocess.CompletedProcess:
    obj = f"tls-creds-psk,id=c0,endpoint=client,dir={creds_dir},username={user},priority={nbdtls.priority()}"
    return subprocess.run(["qemu-img", "info", "--object", obj, "--image-opts",
                           f"driver=nbd,host=127.0.0.1,port={port},export=t,tls-creds=c0"],
                          capture_output=True, text=True, timeout=30)


def test_only_the_migrations_key_gets_through_qemus_tls(tmp_path):
    img = tmp_path / "d.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(img), "1M"], check=True)
    user, key = nbdtls.new_key()
    srv = nbdtls._write_keys(tmp_path, nbdtls.SERVER_DIR, user, key, None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen(["qemu-nbd", "-f", "raw", "-b", "127.0.0.1", "-p", str(port), "-x", "t", "-t",
                          "--object", f"tls-creds-psk,id=s0,endpoint=server,dir={tmp_path / srv},"
                          f"priority={nbdtls.priority()}",
                          "--object", f"authz-simple,id=a0,identity={user}",
                          "--tls-creds", "s0", "--tls-authz", "a0", str(img)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                                    text=True).stdout.strip() != "", 20, what="qemu-nbd to listen")
        good = tmp_path / "good"
        nbdtls._write_keys(tmp_path, "good", user, key, None)
        res = _img_info(port, good, user)
        assert res.returncode == 0 and "1 MiB" in res.stdout, res.stderr
        # Another key under the same name, or another name: refused in the handshake.
        nbdtls._write_keys(tmp_path, "wrong", user, nbdtls.new_key()[1], None)
        assert _img_info(port, tmp_path / "wrong", user).returncode != 0
        other, okey = nbdtls.new_key()
        nbdtls._write_keys(tmp_path, "other", other, okey, None)
        assert _img_info(port, tmp_path / "other", other).returncode != 0
        # Plain NBD is not served at all.
        plain = subprocess.run(["qemu-img", "info", f"nbd://127.0.0.1:{port}/t"], capture_output=True,
                               text=True, timeout=30)
        assert plain.returncode != 0 and "TLS" in plain.stderr
    finally:
        p.terminate()
        p.wait(10)
