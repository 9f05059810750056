"""Issue 5 end to end: vifs, bridges, scripts, NAT/DHCP, hotplug and vnets,
with real guests sending real packets.

Every xend here runs in a network namespace the test creates, joined to
other namespaces (a "LAN", an "outside", a second host) by veth pairs, so
bridges, taps, nftables tables and traffic never leave them; the fixture
removes them (and anything still running in them) even when a test fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from test_errors import assert_clean_error, assert_nothing_left
from pyxen.testing.wait import poll

MAC_RE = re.compile(r"^00:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}$")



def sh(*argv, check=True) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {res.stderr}")
    return res


class Lab:
    """Network namespaces and veth pairs for one test, all removed afterwards."""

    def __init__(self):
        self.tag = uuid.uuid4().hex[:6]
        self.spaces: list[str] = []

    def ns(self, role: str) -> str:
        name = f"px{role}{self.tag}"
        sh("ip", "netns", "add", name)
        self.spaces.append(name)
        self.exec(name, "ip", "link", "set", "lo", "up")
        return name

    def exec(self, ns: str, *argv, check=True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *argv, check=check)

    def wire(self, ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str) -> None:
        """A veth pair: if_a (addr_a) in ns_a <-> if_b (addr_b) in ns_b (made there directly)."""
        sh("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        for ns, name, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            self.exec(ns, "ip", "addr", "add", addr, "dev", name)
            self.exec(ns, "ip", "link", "set", name, "up")

    def links(self, ns: str) -> str:
        return self.exec(ns, "ip", "-o", "link").stdout

    def commands(self, ns: str) -> list[str]:
        """Command lines of the processes running in *ns*."""
        out = []
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
        return out

    def cleanup(self) -> None:
        for ns in self.spaces:
            # Whatever the test left running in its namespaces (a QEMU, a
            # dnsmasq, an xend) goes with them.
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def lab():
    lb = Lab()
    yield lb
    lb.cleanup()


@pytest.fixture
def net_host(lab, make_host):
    """make_host, with xend in a fresh namespace (hosts are cleaned up before the lab)."""
    def make(xend_config: str, ns: str):
        return make_host(xend_config, netns=ns)
    return make


def guest_config(host, name, **values):
    return str(host.config(name, **values))


def start_receiver(lab, ns, addr, port):
    """A TCP sink in *ns*: prints '<bytes> <seconds>' from first to last byte."""
    code = textwrap.dedent(f"""
        import socket, time
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(({addr!r}, {port})); s.listen(1); print("ready", flush=True)
        c, _ = s.accept(); n = 0; t0 = t1 = None
        while True:
            d = c.recv(65536)
            if not d:
                break
            t1 = time.monotonic(); t0 = t0 or t1; n += len(d)
        print(n, t1 - t0, flush=True)
    """)
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


# ---------------------------------------------------------------------------
def test_bridged_guests_spoofing_rate_and_hotplug(lab, net_host):
    h_ns, lan_ns = lab.ns("h"), lab.ns("lan")
    lab.wire(h_ns, "eth0", "10.1.0.1/24", lan_ns, "lan0", "10.1.0.254/24")
    host = net_host("(accel tcg)\n(network-script 'network-bridge netdev=eth0')\n", h_ns)

    # network-bridge made xenbr0 and (asked to) moved eth0 and its address onto it.
    assert re.search(r"eth0@\S+ .* master xenbr0 ", lab.links(h_ns))
    assert "inet 10.1.0.1/24" in lab.exec(h_ns, "ip", "-4", "addr", "show", "xenbr0").stdout

    common = dict(netmask="255.255.255.0", gateway="10.1.0.1")
    host.xm("create", guest_config(host, "g1", ip="10.1.0.11", hostname="web1", **common,
                                   vif=["ip=10.1.0.11", "model=e1000"]))
    host.xm("create", guest_config(host, "g2", ip="10.1.0.12", **common,
                                   vif=["ip=10.1.0.12, rate=4Mb/s"]))
    ids = {n: host.domains()[n]["id"] for n in ("g1", "g2")}

    # network-list: Xen's layout; a random Xen MAC for each vif, unique.
    out = host.xm("network-list", "g1").stdout.splitlines()
    assert out[0] == "Idx BE     MAC Addr.     handle state evt-ch tx-/rx-ring-ref BE-path"
    assert len(out) == 3
    macs = [ln.split()[2] for ln in out[1:]]
    assert all(MAC_RE.match(m) for m in macs), macs
    assert out[1] == ("0   0  %-17s    0     4      -1    -1   /-1      %-30s  "
                      % (macs[0], f"/local/domain/0/backend/vif/{ids['g1']}/0"))
    g2_mac = host.xm("network-list", "g2").stdout.splitlines()[1].split()[2]
    assert len({*macs, g2_mac}) == 3
    assert f"(mac {macs[0]})" in host.xm("list", "-l", "g1").stdout
    long = host.xm("network-list", "-l", "g1").stdout
    assert long.startswith("(0\n") and f"(mac {macs[0]})" in long and f"(vifname vif{ids['g1']}.0)" in long
    # Host side: taps vif<domid>.<devid> on the bridge, Xen's fe:ff:.. backend MAC.
    links = lab.links(h_ns)
    for name in (f"vif{ids['g1']}.0", f"vif{ids['g1']}.1", f"vif{ids['g2']}.0"):
        assert re.search(rf" {re.escape(name)}: .* master xenbr0 .*fe:ff:ff:ff:ff:ff", links), links

    with host.console("g1") as con:
        con.login()
        out, _ = con.run("cat /sys/class/net/eth0/address; cat /sys/bus/pci/devices/*/vendor "
                         "/sys/bus/pci/devices/*/device")
        assert out.split()[0] == macs[0]
        assert "0x100e" in out.split()           # the model=e1000 NIC is there
        # ip/netmask/gateway/hostname from the config, applied by the guest.
        out, _ = con.run("hostname; ip -4 addr show eth0; ip route")
        assert out.startswith("web1\n") and "inet 10.1.0.11/24" in out and "default via 10.1.0.1" in out
        for target in ("10.1.0.12", "10.1.0.1", "10.1.0.254"):   # guest, host, the LAN via eth0
            out, rc = con.run(f"ping -c 2 -W 5 {target}", timeout=30)
            assert rc == 0, out

        # Anti-spoofing: from an address other than ip= nothing gets out.
        _, rc = con.run("ip addr add 10.1.0.99/24 dev eth0")
        assert rc == 0
        out, rc = con.run("ping -c 2 -W 2 -I 10.1.0.99 10.1.0.254", timeout=30)
        assert rc != 0 and "0 packets received" in out, out
        out, rc = con.run("ping -c 1 -W 5 -I 10.1.0.11 10.1.0.254", timeout=30)
        assert rc == 0, out
        con.run("ip addr del 10.1.0.99/24 dev eth0")
    table = lab.exec(h_ns, "nft", "list", "table", "netdev", f"pyxen_vif{ids['g1']}_0").stdout
    dropped = re.search(r"meta protocol ip counter packets (\d+)", table)
    assert dropped and int(dropped.group(1)) >= 2, table

    # rate=4Mb/s (500000 bytes/s) on what g2 sends: measured within 20%.
    sink = start_receiver(lab, h_ns, "10.1.0.1", 5001)
    with host.console("g2") as con:
        con.login()
        out, rc = con.run("dd if=/dev/zero bs=1024 count=1500 2>/dev/null | nc 10.1.0.1 5001", timeout=60)
        assert rc == 0, out
    n, secs = sink.communicate(timeout=30)[0].split()
    rate = int(n) / float(secs)
    assert int(n) == 1500 * 1024
    assert 400_000 <= rate <= 600_000, f"{rate:.0f} bytes/s"

    # Hotplug: a new NIC appears in the running guest, carries traffic, goes away.
    host.xm("network-attach", "g1", "ip=10.1.0.21")
    rows = host.xm("network-list", "g1").stdout.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["0", "1", "2"] and rows[2].split()[4] == "4"
    new_mac = rows[2].split()[2]
    assert MAC_RE.match(new_mac) and new_mac not in (*macs, g2_mac)
    with host.console("g1") as con:
        con.login()
        # eth0 virtio, eth1 the e1000 (no driver in this guest), so virtio's next is eth1.
        dev = poll(lambda: con.run(f"grep -l {new_mac} /sys/class/net/*/address")[0].split("/")[-2:-1],
                   30, what="the hot-plugged NIC in the guest")[0]
        out, rc = con.run(f"ip addr add 10.1.0.21/24 dev {dev} && ip link set {dev} up && "
                          f"ping -c 2 -W 5 -I {dev} 10.1.0.254", timeout=30)
        assert rc == 0, out
        host.xm("network-detach", "g1", "2")
        poll(lambda: con.run(f"grep -l {new_mac} /sys/class/net/*/address")[1] != 0, 30,
             what="the NIC to leave the guest")
    assert len(host.xm("network-list", "g1").stdout.splitlines()) == 3
    assert f"vif{ids['g1']}.2" not in lab.links(h_ns)

    # Bad hotplug requests: clear errors, nothing changes.
    res = host.xm("network-attach", "g1", "colour=red", check=False)
    assert res.returncode == 1 and res.stderr.startswith("Error: Invalid argument: colour=red")
    res = host.xm("network-attach", "g1", "bridge=nosuchbr", check=False)
    assert res.returncode == 1 and "bridge nosuchbr does not exist" in res.stderr, res.stderr
    res = host.xm("network-detach", "g1", "7", check=False)
    assert res.returncode == 1 and res.stderr.strip() == "Error: Device 7 not connected"
    assert len(host.xm("network-list", "g1").stdout.splitlines()) == 3

    # xend restarts (network-bridge start again) without disturbing the guests.
    host.xend("restart")
    assert host.xm("network-list", "g1").stdout.splitlines()[1].split()[2] == macs[0]
    with host.console("g2") as con:
        con.login()
        out, rc = con.run("ping -c 2 -W 5 10.1.0.11", timeout=30)
        assert rc == 0, out

    host.xm("destroy", "g1")
    links = lab.links(h_ns)
    assert f"vif{ids['g1']}." not in links and f"ifbvif{ids['g2']}.0" in links
    assert f"pyxen_vif{ids['g1']}_0" not in lab.exec(h_ns, "nft", "list", "tables").stdout


# ---------------------------------------------------------------------------
def test_nat_dhcp_and_routed_guests_with_own_scripts(lab, net_host):
    h_ns, out_ns = lab.ns("n"), lab.ns("out")
    lab.wire(h_ns, "eth0", "198.51.100.1/24", out_ns, "out0", "198.51.100.2/24")
    root_scripts = "/etc/xen/scripts"
    # A site's own network script, as the manual suggests: a wrapper that
    # sets up NAT and routing, given by absolute path.
    host = net_host("(accel tcg)\n(vif-script vif-nat)\n", h_ns)
    own = host.root / "my-network"
    own.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        d={host.root}{root_scripts}
        "$d/network-nat" "$@" && "$d/network-route" "$@" || exit 1
        echo "$1" >>{host.root}/my-network.log
    """))
    own_vif = host.root / "my-vif"
    own_vif.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        env | sort >{host.root}/my-vif.$1.env
        exec {host.root}{root_scripts}/vif-route "$@"
    """))
    for f in (own, own_vif):
        f.chmod(0o755)
    (host.root / "etc/xen/xend-config.sxp").write_text(
        f"(accel tcg)\n(network-script '{own} netdev=eth0')\n(vif-script vif-nat)\n")
    host.xend("restart")
    assert (host.root / "my-network.log").read_text() == "start\n"

    host.xm("create", guest_config(host, "nat", dhcp="dhcp", vif=["vifname=natguest0"]))
    host.xm("create", guest_config(host, "routed", ip="198.51.100.50", netmask="255.255.255.0",
                                   vif=[f"script={own_vif}, ip=198.51.100.50"]))
    nat_id, routed_id = host.domains()["nat"]["id"], host.domains()["routed"]["id"]

    # The vif script's contract: the arguments and environment it was given.
    env = dict(line.split("=", 1) for line in
               (host.root / "my-vif.online.env").read_text().splitlines() if "=" in line)
    assert env["vif"] == f"vif{routed_id}.0" and env["ip"] == "198.51.100.50"
    assert env["domid"] == str(routed_id) and env["devid"] == "0" and env["domname"] == "routed"
    assert env["XENBUS_PATH"] == f"backend/vif/{routed_id}/0" and MAC_RE.match(env["mac"])

    assert " natguest0: " in lab.links(h_ns)                                  # vifname= names the tap
    assert any("--interface=natguest0" in c for c in lab.commands(h_ns))      # its DHCP server
    with host.console("nat") as con:
        con.login()
        want = f"inet 10.0.{nat_id}.1/24"
        poll(lambda: want in con.run("ip -4 addr show eth0")[0], 30, what="a DHCP lease")
        out, _ = con.run("ip route")
        assert f"default via 10.0.{nat_id}.254" in out
        # The outside has no route back to 10.0.0.0/8: replies prove the NAT.
        out, rc = con.run("ping -c 2 -W 5 198.51.100.2", timeout=30)
        assert rc == 0, out
    with host.console("routed") as con:
        con.login()
        out, rc = con.run("ping -c 2 -W 5 198.51.100.2", timeout=30)
        assert rc == 0, out
    # ...and the outside reaches the routed guest at its own address.
    assert lab.exec(out_ns, "busybox", "ping", "-c", "1", "-W", "5", "198.51.100.50",
                    check=False).returncode == 0

    host.xm("destroy", "routed")
    assert (host.root / "my-vif.offline.env").exists()
    host.xm("destroy", "nat")
    assert not any("dnsmasq" in c for c in lab.commands(h_ns))
    host.xend("stop")
    assert (host.root / "my-network.log").read_text() == "start\nstop\n"
    assert "pyxen_nat" not in lab.exec(h_ns, "nft", "list", "tables").stdout


# ---------------------------------------------------------------------------
def test_vnet_joins_guests_on_two_hosts(lab, net_host, tmp_path):
    a_ns, b_ns = lab.ns("a"), lab.ns("b")
    lab.wire(a_ns, "eth0", "192.0.2.1/24", b_ns, "eth0", "192.0.2.2/24")
    # Host a also floods to b by unicast (vn peer-add); b relies on multicast.
    a = net_host("(accel tcg)\n(vnet-dev eth0)\n(vnet-peers 192.0.2.2)\n", a_ns)
    b = net_host("(accel tcg)\n(vnet-dev eth0)\n", b_ns)
    spec = tmp_path / "vnet97.sxp"
    spec.write_text("(vnet (id 97) (bridge vnet97) (vnetif vnif97)\n      (security none))\n")
    for h, n in ((a, 1), (b, 2)):
        h.xm("vnet-create", str(spec))
        # Xen printed each vnet's SXP, with or without -l.
        assert h.xm("vnet-list").stdout == h.xm("vnet-list", "-l").stdout == "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))\n"
        h.xm("create", guest_config(h, f"v{n}", ip=f"10.97.0.{n}", netmask="255.255.255.0",
                                    vif=["bridge=vnet97"]))
    vx = lab.exec(a_ns, "ip", "-d", "link", "show", "vnif97").stdout
    assert "vxlan id 97 group 224.10.0.1 dev eth0" in vx and "dstport 1798" in vx and "master vnet97" in vx
    assert "dst 192.0.2.2" in lab.exec(a_ns, "bridge", "fdb", "show", "dev", "vnif97").stdout

    res = a.xm("vnet-create", str(spec), check=False)
    assert res.returncode == 1 and "vnet 97 already exists" in res.stderr
    res = a.xm("vnet-delete", "97", check=False)
    assert res.returncode == 1 and "vnet 97 is in use" in res.stderr
    a.xend("restart")                       # vnets are persisted and set up again
    assert a.xm("vnet-list").stdout == "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))\n"

    with a.console("v1") as con:
        con.login()
        out, _ = con.run("cat /sys/class/net/eth0/mtu")
        assert out.strip() == "1450"        # the VXLAN's MTU, told to the guest
        out, rc = con.run("ping -c 3 -W 5 10.97.0.2", timeout=40)
        assert rc == 0, out
    with b.console("v2") as con:
        con.login()
        out, rc = con.run("ping -c 2 -W 5 10.97.0.1", timeout=30)
        assert rc == 0, out

    a.xm("destroy", "v1")
    a.xm("vnet-delete", "97")
    assert a.xm("vnet-list").stdout == ""
    assert "vnif97" not in lab.links(a_ns) and "vnet97" not in lab.links(a_ns)


# ---------------------------------------------------------------------------
def test_bad_vif_and_vnet_specs_fail_clearly(lab, net_host, tmp_path):
    ns = lab.ns("e")
    host = net_host("(accel tcg)\n(network-script network-bridge)\n", ns)
    for vif, needle in ((["colour=red"], "Invalid vif option: colour"),
                        (["mac=01:00:5e:00:00:01"], "multicast address"),
                        (["mac=00:16:3e:00:00:01", "mac=00:16:3E:00:00:01"], "used twice"),
                        (["rate=fast"], "bad rate 'fast'"),
                        (["ip=10.0.0.300"], "bad ip '10.0.0.300'"),
                        (["vifname=much-too-long-name"], "bad vifname"),
                        (["model=banana"], "unknown model 'banana'"),
                        (["script=no-such-script"], "script no-such-script not found"),
                        (["bridge=nosuchbr"], "Device 0 (vif) could not be connected. "
                                              "vif-bridge: bridge nosuchbr does not exist")):
        res = host.xm("create", guest_config(host, "bad", vif=vif), check=False)
        assert_clean_error(res, needle)
        assert_nothing_left(host)
    assert not re.search(r" vif\d+\.\d+[:@]", lab.links(ns))     # no tap left behind

    # A vifname that is taken: refused, and the interface that has it is untouched.
    host.xm("create", guest_config(host, "owner", vif=["vifname=web0, ip=10.5.0.1"]))
    res = host.xm("create", guest_config(host, "thief", vif=["vifname=web0"]), check=False)
    assert_clean_error(res, "vifname web0 is in use by domain owner")
    lab.exec(ns, "ip", "link", "add", "web1", "type", "bridge")      # not a domain's
    res = host.xm("create", guest_config(host, "thief", vif=["vifname=web1"]), check=False)
    assert_clean_error(res, "host interface web1 already exists")
    links = lab.links(ns)
    assert re.search(r" web0: .* master xenbr0 ", links) and " web1: " in links
    assert "pyxen_web0" in lab.exec(ns, "nft", "list", "tables").stdout
    assert set(host.domains()) == {"Domain-0", "owner"}

    bad = tmp_path / "bad.sxp"
    bad.write_text("(vnet (id 98) (security conf))")
    assert_clean_error(host.xm("vnet-create", str(bad), check=False), str(bad), "security 'conf'")
    bad.write_text("(vnet (id ninety))")
    assert_clean_error(host.xm("vnet-create", str(bad), check=False), "vnet id 'ninety' is not a number")
    assert_clean_error(host.xm("vnet-create", str(tmp_path / "none.sxp"), check=False), "File not found")
    assert_clean_error(host.xm("vnet-delete", "98", check=False), "vnet 98 does not exist")
    assert host.xm("vnet-list").stdout == ""
