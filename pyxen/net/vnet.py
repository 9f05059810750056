"""vnets (the manual's Appendix B): private LANs spanning hosts.

A vnet is defined by ``(vnet (id N) (bridge B) (vnetif I) (security none))``.
Xen's vnet module tunnelled ethernet in IP between hosts; pyxen builds the
same thing from kernel VXLAN: the vnet's bridge B has the VXLAN device I
(VNI = N) as a port, and a vif whose bridge is B is on the vnet.  Broadcast
and unknown frames go to a multicast group (how Xen's vnets found each
other) and to any unicast peers configured (what ``vn peer-add`` did);
the VXLAN device learns where each MAC lives, so a guest that moves to
another host is found again by the first frame it sends from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import sxp
from ..config.specs import valid_ifname

# Xen's vnet defaults: the multicast group and UDP port its module used.
DEFAULT_GROUP = "224.10.0.1"
DEFAULT_PORT = 1798
MAX_ID = (1 << 24) - 1           # a VXLAN VNI is 24 bits
SECURITY = ("none",)


class VnetError(ValueError):
    pass


@dataclass(frozen=True)
class VnetConfig:
    id: int
    bridge: str
    vnetif: str
    security: str = "none"

    def to_sxp(self) -> list:
        return ["vnet", ["id", self.id], ["bridge", self.bridge], ["vnetif", self.vnetif],
                ["security", self.security]]

    @classmethod
    def parse(cls, text: str, where: str = "vnet config") -> "VnetConfig":
        try:
            forms = sxp.parse(text)
        except sxp.SxpError as e:
            raise VnetError(f"{where}: {e}") from None
        if len(forms) != 1 or not isinstance(forms[0], list) or not forms[0] or forms[0][0] != "vnet":
            raise VnetError(f"{where}: expected one (vnet (id N) (bridge B) (vnetif I) (security none))")
        return cls.from_sxp(forms[0], where)

    @classmethod
    def from_sxp(cls, form: list, where: str = "vnet config") -> "VnetConfig":
        fields: dict = {}
        for item in form[1:]:
            if not isinstance(item, list) or not item or not isinstance(item[0], str):
                raise VnetError(f"{where}: unexpected {sxp.to_string(item)}")
            k = item[0]
            if k not in ("id", "bridge", "vnetif", "security"):
                raise VnetError(f"{where}: unknown field ({k} ...)")
            if len(item) != 2 or isinstance(item[1], list):
                raise VnetError(f"{where}: ({k} ...) needs one value")
            fields.setdefault(k, str(item[1]))
        if "id" not in fields:
            raise VnetError(f"{where}: (id N) is required")
        raw = fields["id"]
        try:
            vid = int(raw, 0)
        except ValueError:
            raise VnetError(f"{where}: vnet id {raw!r} is not a number") from None
        if not 1 <= vid <= MAX_ID:
            raise VnetError(f"{where}: vnet id {vid} out of range (1-{MAX_ID})")
        bridge = fields.get("bridge") or f"vnet{vid}"
        vnetif = fields.get("vnetif") or f"vnetif{vid}"
        for what, name in (("bridge", bridge), ("vnetif", vnetif)):
            if not valid_ifname(name):
                raise VnetError(f"{where}: bad {what} {name!r}: not a valid interface name")
        if bridge == vnetif:
            raise VnetError(f"{where}: bridge and vnetif must differ ({bridge})")
        security = fields.get("security", "none")
        if security not in SECURITY:
            raise VnetError(f"{where}: security {security!r} is not available: VXLAN neither "
                            "authenticates nor encrypts; use (security none)")
        return cls(vid, bridge, vnetif, security)
