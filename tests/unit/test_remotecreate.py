"""The create request one member sends another (xend/remotecreate.py)."""

import pytest

from pyxen.config import sxp
from pyxen.config.domain import DomainConfig
from pyxen.xend import relocproto as rp
from pyxen.xend import remotecreate


def cfg():
    return DomainConfig.from_sxp(["vm", ["name", "web"], ["memory", "128"], ["uuid", "a65fef84-f864-4589-a65d-4f1e79db2685"],
                                  ["image", ["linux", ["kernel", "/boot/vmlinuz"]]]])


def test_round_trip_through_the_wire_format():
    msg = remotecreate.request(cfg(), True, "alpha")
    back = rp.decode_msg(sxp.to_string(msg).encode())   # what the peer reads off the link
    vm, paused, origin = remotecreate.parse_request(back)
    assert vm[0] == "vm" and DomainConfig.from_sxp(vm).name == "web"
    assert paused is True and origin == "alpha"


@pytest.mark.parametrize("msg, why", [
    (["create", ["version", "9"], ["config", ["vm", ["name", "x"]]]], "protocol version"),
    (["create", ["version", str(rp.VERSION)]], "no (config (vm ...))"),
    (["create", ["version", str(rp.VERSION)], ["config", "(vm (name x))"]], "no (config (vm ...))"),
    (["create", ["version", str(rp.VERSION)], ["config", ["vm"]], ["paused", "yes"]], "bad paused flag"),
])
def test_bad_requests_are_one_protocol_error(msg, why):
    with pytest.raises(rp.ProtocolError, match=why.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        remotecreate.parse_request(msg)


def test_the_check_request_round_trip_and_what_it_answers(tmp_path):
    there = tmp_path / "disk.img"
    there.write_bytes(b"")
    msg = remotecreate.check_request([str(there), "/nonexistent/k"])
    back = rp.decode_msg(sxp.to_string(msg).encode())
    paths = remotecreate.parse_check(back)
    assert sorted(paths) == sorted([str(there), "/nonexistent/k"])
    assert remotecreate.missing_here(paths) == ["/nonexistent/k"]


@pytest.mark.parametrize("msg, why", [
    (["check", ["version", "9"], ["paths", "/x"]], "protocol version"),
    (["check", ["version", str(rp.VERSION)], ["paths", "relative"]], "absolute file names"),
    (["check", ["version", str(rp.VERSION)], ["paths", *[f"/p{i}" for i in range(300)]]], "at most 256"),
])
def test_bad_checks_are_one_protocol_error(msg, why):
    with pytest.raises(rp.ProtocolError, match=why):
        remotecreate.parse_check(msg)


def test_the_check_is_answered_over_a_link(tmp_path):
    import asyncio
    import socket
    a, b = socket.socketpair()
    ours, theirs = rp.Link(a, 5), rp.Link(b, 5)
    theirs_first = None

    async def serve():
        await remotecreate.serve_check(theirs, theirs_first, "peer")
    ours.send(remotecreate.check_request(["/nonexistent/disk", "/"]))
    theirs_first = theirs.recv(5)
    asyncio.run(serve())
    reply = rp.check_reply(ours.recv(5), "missing")
    assert reply == [["missing", "/nonexistent/disk"]]
    a.close()
    b.close()
