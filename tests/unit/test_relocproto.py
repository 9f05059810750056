"""The relocation protocol's framing, messages and stream pumps (pure parts
and the Link over a socketpair; the end-to-end tests are in
tests/system/test_migrate.py)."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from hypothesis import given, settings, strategies as st

from pyxen.config import sxp
from pyxen.xend import relocproto as rp

CFG = ["vm", ["name", "g"], ["memory", "128"], ["uuid", "6f1c7a3e-4a0b-4a39-9d2f-2e4d6c1b0a55"]]


def test_receive_round_trip():
    req = rp.Receive(config=CFG, accel="tcg", machine="pc-i440fx-7.2", qemu="7.2.0", live=True,
                     host="hosta", paused=True, firmware={"firmware": "ovmf", "ovmf_code_size": 2 ** 21},
                     nvram=bytes(range(256)) * 4)
    msg = rp.decode_msg(rp.encode_msg(req.to_msg())[rp.HEADER.size:])
    assert rp.parse_receive(msg) == req


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.__setitem__(1, ["version", 9]), "version"),
    (lambda m: m.__setitem__(2, ["config", "x"]), "config"),
    (lambda m: m.__setitem__(3, ["accel", "xen"]), "accelerator"),
    (lambda m: m.__setitem__(4, ["machine", "pc,accel=kvm"]), "machine"),
    (lambda m: m.__setitem__(6, ["live", "2"]), "flag"),
    (lambda m: m.append(["nvram", "***"]), "base64"),
    (lambda m: m.append(["firmware", ["a"]]), "firmware"),
])
def test_bad_receive_requests(change, needle):
    msg = rp.Receive(CFG, "tcg", "pc", "7.2.0", False, "h").to_msg()
    change(msg)
    with pytest.raises(rp.ProtocolError, match=needle):
        rp.parse_receive(msg)


def test_headers():
    assert rp.parse_header(rp.frame(rp.DATA, b"xy")[:5]) == (rp.DATA, 2)
    for bad, needle in ((b"Z\0\0\0\0", "unknown"), (b"D\x10\0\0\x01", "data frame"),
                        (b"C\x10\0\0\x01", "control"), (b"E\0\0\0\x01", "payload"), (b"C\0", "truncated")):
        with pytest.raises(rp.ProtocolError, match=needle):
            rp.parse_header(bad)


def test_replies():
    assert rp.check_reply(rp.ok(["domid", 4]), "domid") == [["domid", 4]]
    assert rp.check_reply(rp.ok("loaded"), "loaded") == ["loaded"]
    with pytest.raises(rp.PeerError, match="no room") as e:
        rp.check_reply(rp.err("refused", "no room"))
    assert e.value.kind == "refused"
    with pytest.raises(rp.ProtocolError):
        rp.check_reply(["commit"])
    with pytest.raises(rp.ProtocolError):
        rp.check_reply(rp.ok("running"), "loaded")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_decode_any_bytes_cleanly(data):
    try:
        msg = rp.decode_msg(data)
    except rp.ProtocolError:
        return
    assert isinstance(msg, list) and isinstance(msg[0], str)
    try:
        rp.parse_receive(msg)
    except rp.ProtocolError:
        pass


def _pair():
    a, b = socket.socketpair()
    return rp.Link(a, timeout=5), rp.Link(b, timeout=5)


def _feed_forever(sock: socket.socket) -> None:
    """A source QEMU that writes until its socket fails (a daemon thread)."""
    def feed():
        try:
            while True:
                sock.sendall(b"\0" * (1 << 20))
        except OSError:
            pass
    threading.Thread(target=feed, daemon=True).start()


def test_stream_passes_through_intact():
    src_link, dst_link = _pair()
    q_out, x_out = socket.socketpair()       # "source QEMU" writes into q_out
    x_in, q_in = socket.socketpair()          # "target QEMU" reads from q_in
    payload = os.urandom(3 << 20)
    got = bytearray()

    def qemu_source():
        q_out.sendall(payload)
        q_out.close()

    def qemu_target():
        while True:
            d = q_in.recv(1 << 16)
            if not d:
                return
            got.extend(d)

    def target():
        kind, problem = dst_link.pump_in(x_in)
        x_in.close()
        assert (kind, problem) == (rp.END, None)

    threads = [threading.Thread(target=f) for f in (qemu_source, qemu_target, target)]
    for t in threads:
        t.start()
    src_link.pump_out(x_out)
    src_link.end()
    for t in threads:
        t.join(10)
    assert bytes(got) == payload and src_link.sent == dst_link.sent == len(payload)


def test_target_failure_reaches_the_source_mid_stream():
    src_link, dst_link = _pair()
    q_out, x_out = socket.socketpair()
    x_in, q_in = socket.socketpair()
    q_in.close()                               # the target QEMU died: writes fail
    result = {}

    def target():
        result["in"] = dst_link.pump_in(x_in)

    t = threading.Thread(target=target)
    t.start()

    _feed_forever(q_out)
    with pytest.raises(rp.PeerError, match="stopped reading"):
        src_link.pump_out(x_out)
    src_link.end(rp.ABORT)
    t.join(10)
    q_out.close()
    kind, problem = result["in"]
    assert kind == rp.ABORT and "stopped reading" in problem


def test_receive_early_flag_round_trips():
    req = rp.Receive(config=CFG, accel="tcg", machine="pc-i440fx-7.2", qemu="7.2.0", live=True, host="a",
                     early=True)
    msg = req.to_msg()
    assert ["early", 1] in msg and rp.parse_receive(msg).early
    # An older source says nothing: the classic order.
    assert not rp.parse_receive([m for m in msg if m != ["early", 1]]).early


def test_early_stream_is_held_until_qemu_listens_then_in_order():
    """The target holds the first frames while its QEMU starts; the
    source sends no more than its gate before the target says it listens
    (QEMU then waits on its socket), and QEMU gets every byte in order."""
    import time
    src_link, dst_link = _pair()
    q_out, x_out = socket.socketpair()
    payload = os.urandom(8 << 20)
    spool = rp.Spool(64 << 20)
    got, result, heard = bytearray(), {}, []

    def qemu_source():
        q_out.sendall(payload)
        q_out.close()

    def target():
        result["in"] = dst_link.pump_in(spool)

    def source():
        src_link.pump_out(x_out, 2 << 20, heard.append)
        src_link.end()

    threads = [threading.Thread(target=f) for f in (qemu_source, target, source)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while spool.size < 2 << 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)             # (would the source go past its gate?)
    assert 2 << 20 <= spool.size < 4 << 20 and heard == []
    x_in, q_in = socket.socketpair()

    def qemu_target():
        while True:
            d = q_in.recv(1 << 16)
            if not d:
                return
            got.extend(d)
    reader = threading.Thread(target=qemu_target)
    reader.start()
    spool.attach(x_in)
    for t in threads:
        t.join(10)
    x_in.close()
    reader.join(10)
    assert heard == [True] and result["in"] == (rp.END, None)
    assert bytes(got) == payload


def test_early_target_that_listens_before_the_gate_says_so_with_a_frame():
    src_link, dst_link = _pair()
    q_out, x_out = socket.socketpair()
    x_in, q_in = socket.socketpair()
    spool = rp.Spool(64 << 20)
    spool.attach(x_in)              # QEMU listened at once
    heard, result = [], {}
    threading.Thread(target=lambda: (q_out.sendall(b"\2" * (3 << 20)), q_out.close())).start()
    t = threading.Thread(target=lambda: result.update(r=dst_link.pump_in(spool)))
    t.start()
    drain = threading.Thread(target=lambda: [None for _ in iter(lambda: q_in.recv(1 << 16), b"")])
    drain.start()
    src_link.pump_out(x_out, 64 << 20, heard.append)
    src_link.end()
    t.join(10)
    x_in.close()
    drain.join(10)
    assert heard == [False] and result["r"] == (rp.END, None)


@pytest.mark.parametrize("cap, gate", [(1 << 20, 4 << 20),     # the target's reader waits at its cap
                                       (64 << 20, 1 << 20)])    # the source waits at its gate
def test_early_refusal_reaches_the_source_with_the_targets_reason(cap, gate):
    src_link, dst_link = _pair()
    q_out, x_out = socket.socketpair()
    spool = rp.Spool(cap)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=dst_link.pump_in(spool)))
    t.start()

    _feed_forever(q_out)
    threading.Timer(0.3, spool.refuse, ("refused", "not enough memory for domain x")).start()
    with pytest.raises(rp.PeerError, match="not enough memory for domain x"):
        src_link.pump_out(x_out, gate, lambda held: None)
    src_link.end(rp.ABORT)
    t.join(10)
    q_out.close()
    assert result["r"] == (rp.ABORT, "not enough memory for domain x")


def test_peer_silence_and_close_are_protocol_errors():
    a, b = _pair()
    a.sock.settimeout(0.2)
    with pytest.raises(rp.ProtocolError, match="sent nothing"):
        a.recv(timeout=0.2)
    b.close()
    with pytest.raises(rp.ProtocolError, match="closed"):
        a.recv()


def test_control_message_size_is_bounded():
    a, b = _pair()
    b.sock.sendall(rp.HEADER.pack(rp.CTRL, rp.MAX_CTRL + 1))
    with pytest.raises(rp.ProtocolError, match="control message"):
        a.recv()
    assert sxp.to_string(rp.ok()) == "(ok)"


def test_relocation_accepts_host_certificates_only(tmp_path):
    """An API user's client certificate comes from the pool CA too, but the
    relocation server takes domains from hosts only (serverAuth)."""
    from cryptography import x509
    from pyxen import pki
    ca = tmp_path / "pki"
    pki.make_ca(ca)
    host = pki.make_host_cert(ca, "hosta", ["10.0.0.1"])
    user = pki.make_client_cert(ca, "alice", tmp_path / "alice")
    der = lambda p: x509.load_pem_x509_certificate(p.read_bytes()).public_bytes(  # noqa: E731
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER)
    assert pki.is_host_cert(der(host))
    assert not pki.is_host_cert(der(user))
    assert not pki.is_host_cert(None) and not pki.is_host_cert(b"junk")
