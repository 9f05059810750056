"""Bandwidth limits for vifs (the vif ``rate=`` setting).

Xen's netback gave each vif a credit of ``rate x interval`` bytes per
interval for what the guest transmits.  Here that is a token bucket (tbf)
with the same rate and a bucket of one interval's credit, on an ifb device
that the tap's ingress is redirected to: the guest's transmissions arrive
on the host as the tap's ingress, and only egress can be shaped (queued
rather than dropped, so TCP settles at the rate instead of collapsing).
"""

from __future__ import annotations

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .links import LinkError

INGRESS = 0xFFFF0000
ETH_P_ALL = 0x0003


def ifb_name(vif: str) -> str:
    # Interface names stop at 15 bytes: a long vifname's ifb is cut short
    # (vif<domid>.<devid> never is).
    return ("ifb" + vif)[:15]


def limit(vif: str, bytes_per_sec: int, interval_us: int) -> None:
    """Shape what the guest behind tap *vif* sends to *bytes_per_sec*."""
    ifb = ifb_name(vif)
    # One interval's credit, but never less than a full-size frame.
    burst = max(bytes_per_sec * interval_us // 1_000_000, 1600)
    with IPRoute() as ipr:
        tap = ipr.link_lookup(ifname=vif)
        if not tap:
            raise LinkError(f"no interface {vif}")
        try:
            if ipr.link_lookup(ifname=ifb):
                ipr.link("del", ifname=ifb)
            ipr.link("add", ifname=ifb, kind="ifb")
            idx = ipr.link_lookup(ifname=ifb)[0]
            ipr.link("set", index=idx, state="up")
            ipr.tc("add", "tbf", idx, 0x10000, rate=bytes_per_sec, burst=burst, latency="200ms")
            ipr.tc("add", "ingress", tap[0], INGRESS)
            ipr.tc("add-filter", "u32", tap[0], parent=INGRESS, prio=1, protocol=ETH_P_ALL,
                   target=0x10001, keys=["0x0/0x0+0"],
                   action=[{"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": idx}])
        except NetlinkError as e:
            raise LinkError(f"cannot limit {vif} to {bytes_per_sec} bytes/s: {e.args[-1]}") from None


def clear(vif: str) -> None:
    """Drop *vif*'s limit (its ifb; the ingress qdisc goes with the tap)."""
    with IPRoute() as ipr:
        ifb = ipr.link_lookup(ifname=ifb_name(vif))
        if ifb:
            try:
                ipr.link("del", index=ifb[0])
            except NetlinkError:
                pass
        tap = ipr.link_lookup(ifname=vif)
        if tap:
            try:
                ipr.tc("del", "ingress", tap[0], INGRESS)
            except NetlinkError:
                pass
