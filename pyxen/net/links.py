"""Network links through netlink (pyroute2): taps, bridges, VXLAN, ifb.

Plain blocking functions: xend calls them from a worker thread (pyroute2's
synchronous API runs its own event loop and must not run on xend's).
Every function acts on the network namespace of the calling process.
"""

from __future__ import annotations

import errno
import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

# pyroute2 logs every netlink message at DEBUG; xend's log says what matters.
logging.getLogger("pyroute2").setLevel(logging.WARNING)

# Xen gave every backend vif this address so that a bridge, which takes the
# lowest MAC of its ports, never takes a guest-facing port's.
BACKEND_MAC = "fe:ff:ff:ff:ff:ff"


class LinkError(Exception):
    pass


def _err(what: str, e: NetlinkError) -> LinkError:
    return LinkError(f"{what}: {e.args[1] if len(e.args) > 1 else e}")


def index(name: str) -> int | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def exists(name: str) -> bool:
    return index(name) is not None


def kind(name: str) -> str | None:
    """The link's kind ('bridge', 'tun', 'vxlan', 'veth', ...), '' for a plain NIC, None if absent."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
    return link.get(("linkinfo", "kind")) or ""


def master(name: str) -> str | None:
    """The bridge *name* is a port of, if any."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        m = ipr.get_links(found[0])[0].get("master")
        if not m:
            return None
        return ipr.get_links(m)[0].get("ifname")


def mtu(name: str) -> int | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        return ipr.get_links(found[0])[0].get("mtu") if found else None


def create_tap(name: str, mac: str = BACKEND_MAC, owner: tuple[int, int] | None = None) -> None:
    """A persistent tap *name* (QEMU attaches to it by name), down, not on any
    bridge; with *owner* (uid, gid) that unprivileged user may attach to it."""
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=name):
            # Opening an existing tap would silently share it: refuse instead.
            raise LinkError(f"host interface {name} already exists")
        try:
            extra = {"uid": owner[0], "gid": owner[1]} if owner else {}
            ipr.link("add", ifname=name, kind="tuntap", mode="tap", **extra)
            idx = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=idx, address=mac)
        except NetlinkError as e:
            raise _err(f"cannot create tap {name}", e) from None
        except OSError as e:
            raise LinkError(f"cannot create tap {name}: {e.strerror or e}") from None


def delete(name: str) -> bool:
    """Remove link *name*; False if it was not there."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise _err(f"cannot remove {name}", e) from None
    return True


def set_up(name: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise LinkError(f"no interface {name}")
        ipr.link("set", index=found[0], state="up")


def bridges() -> list[str]:
    with IPRoute() as ipr:
        return sorted(link.get("ifname") for link in ipr.get_links()
                      if link.get(("linkinfo", "kind")) == "bridge")


def bridge_ports(bridge: str) -> list[str]:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            return []
        return sorted(link.get("ifname") for link in ipr.get_links() if link.get("master") == found[0])


def ensure_bridge(name: str) -> bool:
    """Bridge *name* exists and is up; True if it was created now."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        created = False
        if found:
            k = ipr.get_links(found[0])[0].get(("linkinfo", "kind"))
            if k != "bridge":
                raise LinkError(f"{name} exists and is not a bridge")
        else:
            try:
                # Forward at once: no STP listening delay for guests' first packets.
                ipr.link("add", ifname=name, kind="bridge", br_forward_delay=0)
            except NetlinkError as e:
                raise _err(f"cannot create bridge {name}", e) from None
            found = ipr.link_lookup(ifname=name)
            created = True
        ipr.link("set", index=found[0], state="up")
    return created


def enslave(port: str, bridge: str) -> None:
    with IPRoute() as ipr:
        p, b = ipr.link_lookup(ifname=port), ipr.link_lookup(ifname=bridge)
        if not p:
            raise LinkError(f"no interface {port}")
        if not b:
            raise LinkError(f"no bridge {bridge}")
        try:
            ipr.link("set", index=p[0], master=b[0], state="up")
        except NetlinkError as e:
            raise _err(f"cannot add {port} to bridge {bridge}", e) from None


def ensure_vxlan(name: str, vni: int, group: str, port: int, dev: str, peers: list[str],
                 bridge: str) -> None:
    """VXLAN *name* (VNI *vni*) flooding to multicast *group* and unicast *peers*, on *bridge*."""
    with IPRoute() as ipr:
        d = ipr.link_lookup(ifname=dev)
        if not d:
            raise LinkError(f"vnet underlay interface {dev} does not exist")
        found = ipr.link_lookup(ifname=name)
        if found:
            info = ipr.get_links(found[0])[0]
            if info.get(("linkinfo", "kind")) != "vxlan" or \
                    info.get(("linkinfo", "data", "vxlan_id")) != vni:
                raise LinkError(f"{name} exists and is not the VXLAN of vnet {vni}")
        else:
            try:
                ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_group=group,
                         vxlan_port=port, vxlan_link=d[0], vxlan_learning=1)
            except NetlinkError as e:
                raise _err(f"cannot create VXLAN {name}", e) from None
            found = ipr.link_lookup(ifname=name)
        idx = found[0]
        # Unicast peers: an all-zeros FDB entry per peer makes the kernel send
        # each broadcast/unknown frame to that peer as well as to the group.
        have = {e.get("NDA_DST") for e in ipr.fdb("dump", ifindex=idx)
                if e.get("NDA_LLADDR") == "00:00:00:00:00:00"}
        for peer in peers:
            if peer not in have:
                try:
                    ipr.fdb("append", ifindex=idx, lladdr="00:00:00:00:00:00", NDA_DST=peer)
                except NetlinkError as e:
                    raise _err(f"cannot add vnet peer {peer} to {name}", e) from None
        b = ipr.link_lookup(ifname=bridge)
        if not b:
            raise LinkError(f"no bridge {bridge}")
        ipr.link("set", index=idx, master=b[0], state="up")


def default_route_dev() -> str | None:
    """The interface IPv4's default route leaves by, if there is one."""
    import socket
    with IPRoute() as ipr:
        for r in ipr.get_default_routes(family=socket.AF_INET):
            oif = r.get("RTA_OIF")
            if oif:
                return ipr.get_links(oif)[0].get("ifname")
    return None
