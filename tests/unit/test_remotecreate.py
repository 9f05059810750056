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
