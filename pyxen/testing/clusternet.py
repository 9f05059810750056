"""A private network for cluster tests: a hub namespace with a bridge, and
one namespace per etcd member and per xend host, each with a veth to it.

Every name carries a tag unique to this object (namespaces ``pxc<role><tag>``,
hub-side veths ``pc<n><tag>``), so tests running at once never meet, and
the addresses (10.213.0.0/24) exist only inside these namespaces: nothing
touches the host's own interfaces.  :meth:`cut` drops one namespace's
traffic to given addresses with an nftables table *inside that namespace*
(a host cut off from etcd); :meth:`heal` removes it.  :meth:`cleanup`
kills what runs in the namespaces and deletes them (and so their veths).
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid as uuidlib

SUBNET = "10.213.0"


def _sh(*argv, check=True, input=None) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, input=input)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res


class ClusterNet:
    def __init__(self):
        self.tag = uuidlib.uuid4().hex[:6]
        self.spaces: list[str] = []
        self.hub = self._ns("hub")
        self.exec(self.hub, "ip", "link", "add", "hub0", "type", "bridge")
        self.exec(self.hub, "ip", "link", "set", "hub0", "up")
        self._n = 0

    def _ns(self, role: str) -> str:
        name = f"pxc{role}{self.tag}"
        _sh("ip", "netns", "add", name)
        self.spaces.append(name)
        self.exec(name, "ip", "link", "set", "lo", "up")
        return name

    def exec(self, ns: str, *argv, check=True, input=None) -> subprocess.CompletedProcess:
        return _sh("ip", "netns", "exec", ns, *argv, check=check, input=input)

    def add(self, role: str, host_byte: int) -> tuple[str, str]:
        """A namespace for *role* at 10.213.0.<host_byte>, wired to the hub;
        returns (namespace, address)."""
        ns = self._ns(role)
        self._n += 1
        hub_side = f"pc{self._n}{self.tag}"
        ip = f"{SUBNET}.{host_byte}"
        _sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", hub_side, "netns", self.hub)
        self.exec(self.hub, "ip", "link", "set", hub_side, "master", "hub0")
        self.exec(self.hub, "ip", "link", "set", hub_side, "up")
        self.exec(ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        self.exec(ns, "ip", "link", "set", "eth0", "up")
        return ns, ip

    def cut(self, ns: str, addrs: list[str]) -> None:
        """Drop every packet between *ns* and *addrs* (both ways), inside *ns*."""
        s = ", ".join(addrs)
        rules = (f"table inet pxcut {{\n"
                 f"  chain o {{ type filter hook output priority 0; ip daddr {{ {s} }} drop; }}\n"
                 f"  chain i {{ type filter hook input priority 0; ip saddr {{ {s} }} drop; }}\n"
                 f"}}\n")
        self.exec(ns, "nft", "-f", "-", input=rules)

    def heal(self, ns: str) -> None:
        self.exec(ns, "nft", "delete", "table", "inet", "pxcut", check=False)

    def kill_all(self, ns: str) -> int:
        """SIGKILL every process in *ns* (a host's machine dying: xend, its
        lease keeper, its QEMUs); how many there were."""
        n = 0
        for pid in _sh("ip", "netns", "pids", ns, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
                n += 1
            except (ProcessLookupError, ValueError):
                pass
        return n

    def cleanup(self) -> None:
        for ns in reversed(self.spaces):
            self.kill_all(ns)
            _sh("ip", "netns", "del", ns, check=False)
        self.spaces = []
