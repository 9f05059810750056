"""A Xen admin's first day (issue 16): the manual's commands and examples
as typed, on real guests where a VM is involved."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from pyxen.testing.wait import poll


# ------------------------------------------------------------ HVM example
def test_xmexample_hvm_boots_the_test_disk_with_ide_and_ioemu_nics(host, hvm_media, bridge):
    """xmexample.hvm as laid out, on a private copy of the HVM test disk, with
    the manual's A.2 devices: the ioemu:hda IDE disk and type=ioemu NICs
    (rtl8139, e1000, ne2k_pci) are usable from inside the guest.  acpi = 0:
    xm shutdown is refused at once with the way out."""
    example = (host.root / "etc/xen/xmexample.hvm").read_text()
    assert f"file:{hvm_media['disk']},ioemu:hda,w" in example       # boots the HVM test disk
    disk = host.root / "disk.img"
    shutil.copy(hvm_media["disk"], disk)
    cfg = host.root / "etc/xen/hvmex"
    cfg.write_text(example.replace(str(hvm_media["disk"]), str(disk)).replace("acpi = 1", "acpi = 0")
                   + f"vif = ['type=ioemu, bridge={bridge}', 'type=ioemu, model=e1000, bridge={bridge}',"
                     f" 'type=ioemu, model=ne2k_pci, bridge={bridge}']\n")
    host.xm("create", str(cfg))
    with host.console("ExampleHVMDomain") as con:
        con.login(timeout=300)
        out, rc = con.run("cat /proc/partitions")
        assert rc == 0 and re.search(r"\bsda\b", out) and re.search(r"\bsda1\b", out), out
        out, rc = con.run("for n in /sys/class/net/eth*; do echo ${n##*/} "
                          "$(basename $(readlink $n/device/driver)); done")
        drivers = dict(line.split() for line in out.splitlines() if line.startswith("eth"))
        assert sorted(drivers) == ["eth0", "eth1", "eth2"], out
        assert sorted(drivers.values()) in (["8139cp", "e1000", "ne2k-pci"], ["8139too", "e1000", "ne2k-pci"])
        out, rc = con.run("ip link set eth1 up && cat /sys/class/net/eth1/operstate")
        assert rc == 0
    res = host.xm("shutdown", "-w", "ExampleHVMDomain", check=False, timeout=60)
    assert res.returncode == 1
    assert "has no ACPI (acpi = 0)" in res.stderr and "xm destroy ExampleHVMDomain" in res.stderr
    assert host.domains()["ExampleHVMDomain"]["state"] != "---s-d"     # still there, untouched
    host.xm("destroy", "ExampleHVMDomain")


def test_xmexample_vmx_is_the_manuals_name_for_the_same_guest(host, hvm_media):
    out = host.xm("create", "-n", "xmexample.vmx").stdout
    assert "(image\n        (hvm" in out or "(image (hvm" in out
    assert f"(uname file:{hvm_media['disk']})" in out


# ------------------------------------------------------ xend start / restart
def test_xend_start_refuses_a_missing_network_script(make_host):
    h = make_host("(accel tcg)\n(network-script network-nosuch)\n", start=False)
    res = h.xend("start", check=False)
    assert res.returncode == 1
    assert "Error: (network-script network-nosuch): script network-nosuch not found" in res.stderr
    assert "Traceback" not in res.stderr
    assert h.xend("status", check=False).returncode == 3           # nothing half-started
    assert h.xend("check-config", check=False).returncode == 1


def test_xend_start_prints_misspelt_options_and_script_failures(make_host):
    h = make_host("(accel tcg)\n(xend-relocation-sever yes)\n(xend-tcp-xmlrpc-server yes)\n"
                  "(network-script my-net)\n", start=False)
    scripts = h.root / "etc/xen/scripts"
    scripts.mkdir(parents=True)
    (scripts / "my-net").write_text("#!/bin/sh\necho 'my-net: no uplink found' >&2\nexit 1\n")
    (scripts / "my-net").chmod(0o755)
    res = h.xend("start")
    assert "did you mean (xend-relocation-server ...)?" in res.stderr
    assert "(xend-tcp-xmlrpc-server yes) is accepted but has no effect" in res.stderr
    assert "Warning: (network-script my-net) start failed: my-net: no uplink found" in res.stderr
    assert h.xend("status", check=False).returncode == 0


def test_xend_restart_with_a_config_that_cannot_start_keeps_the_old_xend(host):
    pid = (host.root / "var/run/pyxen/xend.pid").read_text().strip()
    (host.root / "etc/xen/xend-config.sxp").write_text("(accel tcg)\n(xend-relocation-server yes)\n")
    res = host.xend("check-config", check=False)
    assert res.returncode == 1 and "relocation server:" in res.stderr
    res = host.xend("restart", check=False)
    assert res.returncode == 1 and "relocation server:" in res.stderr and "not restarted" in res.stderr
    assert host.xend("status", check=False).returncode == 0
    assert (host.root / "var/run/pyxen/xend.pid").read_text().strip() == pid
    (host.root / "etc/xen/xend-config.sxp").write_text("(accel tcg)\n")
    assert host.xend("check-config").stdout.strip().endswith(": OK")


def test_network_vnet_sets_up_vnet_support_then_the_bridge(make_host):
    ns = f"pxfd{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        h = make_host("(accel tcg)\n(network-script network-vnet)\n", start=False, netns=ns)
        res = h.xend("start")
        assert "Warning" not in res.stderr, res.stderr
        assert (h.root / "etc/xen/scripts/network-vnet").is_file()
        link = subprocess.run(["ip", "-n", ns, "-d", "link", "show", "xenbr0"], capture_output=True, text=True)
        assert link.returncode == 0 and "bridge" in link.stdout
        assert os.path.isdir("/sys/module/vxlan")
        h.xend("stop")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


# -------------------------------------------------------------- README / xm
def test_readme_mem_max_on_xmexample2(host):
    host.xm("create", "xmexample2", "vmid=3")
    host.xm("mem-set", "VM3", "96")
    host.xm("mem-max", "VM3", "256")
    host.xm("destroy", "VM3")


def test_manual_sxp_vif_and_dom0_messages(host, tmp_path):
    spec = tmp_path / "vn.sxp"
    spec.write_text(f"(vm (name vn) (memory 128) (image (linux (kernel {host.image}/vmlinuz)))\n"
                    "    (dev (vif (mac aa:00:00:01:02:03) (bridge vnet97))))\n")
    out = host.xm("create", "-n", "-F", str(spec)).stdout
    assert "(device (vif (mac aa:00:00:01:02:03) (bridge vnet97)))" in out
    spec.write_text("(vm (name vn)\n    (image (linux (kernel /k))\n")
    res = host.xm("create", "-n", "-F", str(spec), check=False)
    assert res.returncode == 1 and f"{spec}:2: unexpected EOF: this '(' is never closed" in res.stderr
    res = host.xm("pci-attach", "0", "0000:00:01.0", check=False)
    assert res.returncode == 1 and "Domain 0 does not support pci-attach" in res.stderr


# ------------------------------------------------------ QEMU's own reason
def test_failed_restore_quotes_qemus_reason(host, tmp_path):
    """A save file whose config lacks a device its QEMU state has: the
    message carries QEMU's own line ("Unknown savevm section ..."), not only
    "QEMU could not load it"."""
    from pyxen.config import sxp
    from pyxen.xend import checkpoint
    img = host.root / "d.img"
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    host.xm("create", str(host.config("rs", disk=[f"file:{img},xvdb,w"])))
    with host.console("rs") as con:
        con.wait_login_prompt()
    good = tmp_path / "rs.chk"
    host.xm("save", "rs", str(good), timeout=120)
    info = checkpoint.read_header(str(good))
    vm = sxp.from_string(info.config)
    vm = [x for x in vm if not (isinstance(x, list) and x and x[0] == "device" and x[1][0] == "vbd")]
    raw = good.read_bytes()
    bad = tmp_path / "nodisk.chk"
    bad.write_bytes(checkpoint.encode_header(sxp.to_string(vm), info.meta, info.stream_length,
                                             info.stream_digest, info.algorithm)
                    + raw[info.stream_offset:])
    res = host.xm("restore", str(bad), check=False, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "QEMU says:" in res.stderr and "savevm section" in res.stderr, res.stderr
    assert set(host.domains()) == {"Domain-0"}
    host.xm("restore", str(good), timeout=120)       # the good one still restores
    host.xm("destroy", "rs")


# ------------------------------------------------------------------ disks
def test_phy_lv_without_device_mapper_says_so(host):
    from pyxen.storage import lvm
    ok, _ = lvm.dm_available()
    res = host.xm("create", str(host.config("lv", disk=["phy:pxnovg/root,xvda1,w"])), check=False)
    assert res.returncode == 1 and "/dev/pxnovg/root does not exist" in res.stderr
    if ok:
        assert "no logical volume root in volume group pxnovg" in res.stderr
    else:
        assert "device-mapper is not available" in res.stderr
    assert set(host.domains()) == {"Domain-0"}


def test_file_naming_a_block_device_is_used_as_the_device(host, tmp_path):
    """xm-test's block-attach file:<block device>: Xen put a loop device over
    any path, so it worked; here it is opened as the device (through the
    sharing guard like phy:)."""
    img = tmp_path / "b.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        host.xm("create", str(host.config("fb")))
        with host.console("fb") as con:
            con.login()
            host.xm("block-attach", "fb", f"file:{loop}", "xvdb", "w")
            # The kernel names it vdX in order of arrival; its serial is the config's name.
            poll(lambda: "xvdb" in con.run("cat /sys/block/vd*/serial")[0], timeout=60,
                 what="the xvdb disk in the guest")
        res = host.xm("create", str(host.config("fb2", disk=[f"phy:{loop},xvda1,w"])), check=False)
        assert res.returncode == 1 and "fb" in res.stderr        # the guard knows it is the same device
        host.xm("destroy", "fb")
    finally:
        subprocess.run(["losetup", "-d", loop])


# ------------------------------------------------------------------ memory
def test_mem_set_below_the_floor_is_refused_and_the_floor_keeps_the_guest(host):
    """xm-test's mem-set dom 18 killed the guest's console and the guest:
    refused with the floor named; at the floor the guest still answers."""
    from pyxen.xend.guestreach import MEM_FLOOR
    host.xm("create", str(host.config("mf")))
    with host.console("mf") as con:
        con.login()
        res = host.xm("mem-set", "mf", "18", check=False)
        assert res.returncode == 1 and f"below the {MEM_FLOOR} MiB floor" in res.stderr
        host.xm("mem-set", "mf", str(MEM_FLOOR))
        poll(lambda: int(con.run("awk '/MemTotal/ {print $2}' /proc/meminfo")[0]) < 100 * 1024,
             timeout=60, what="the balloon to inflate")
        out, rc = con.run("ls / >/dev/null; echo alive")
        assert rc == 0 and out.splitlines()[-1] == "alive"      # (kernel lines may come first)
    assert host.domains()["mf"]["mem"] == MEM_FLOOR
    host.xm("destroy", "mf")


# ------------------------------------------------------------- boot log
def test_boot_log_is_shown_unless_extra_asks_for_quiet(host):
    """xm create -c users see the kernel's boot messages; quiet is theirs to ask for."""
    host.xm("create", str(host.config("loud")))
    host.xm("create", str(host.config("hush", extra="quiet")))
    for name in ("loud", "hush"):
        with host.console(name) as con:
            con.wait_login_prompt()
    logs = {n: (host.root / f"var/log/xen/console/guest-{n}.log").read_text(errors="replace")
            for n in ("loud", "hush")}
    assert "Linux version" in logs["loud"] and "Linux version" not in logs["hush"]
    with host.console("hush") as con:
        con.login()
        out, _ = con.run("cat /proc/cmdline")
        assert " quiet" in out


# ------------------------------------------------------------ accelerator
def test_xend_reprobe_forgets_the_verdict_and_probes_again(make_host):
    h = make_host("(accel auto)\n")
    poll(lambda: "accelerator " in h.xm("info").stdout, timeout=120, what="the verdict")
    pid = (h.root / "var/run/pyxen/xend.pid").read_text()
    res = h.xend("reprobe")
    assert "accelerator verdict cleared: restarting xend to probe again" in res.stdout
    assert (h.root / "var/run/pyxen/xend.pid").read_text() != pid
    info = h.xm("info").stdout
    assert "probed earlier" not in [ln for ln in info.splitlines() if ln.startswith("accelerator_detail")][0]
    h.xend("stop")
    assert "verdict cleared: xend probes again when it starts" in h.xend("reprobe").stdout


# ------------------------------------------------------------------- DHCP
def test_dhcp_lease_arrives_soon_after_a_late_server(host, bridge, tmp_path):
    """The guest's udhcpc gave up before the server answered and only asked
    again 20 s later: a server that comes up after the guest has booted is
    asked again within a few seconds."""
    host.xm("create", str(host.config("dh", vif=[f"bridge={bridge}"], dhcp="dhcp")))
    with host.console("dh") as con:
        con.login()
        out, _ = con.run("ip -4 -o addr show dev eth0")
        assert "inet " not in out                          # no server yet
        subprocess.run(["ip", "addr", "add", "10.253.7.1/24", "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        leases = tmp_path / "leases"
        dns = subprocess.Popen(["dnsmasq", "--no-daemon", "--port=0", f"--interface={bridge}",
                                "--bind-interfaces", "--except-interface=lo",
                                "--dhcp-range=10.253.7.10,10.253.7.50,1h", f"--dhcp-leasefile={leases}",
                                "--conf-file=/dev/null", f"--pid-file={tmp_path / 'pid'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            poll(lambda: "inet 10.253.7." in con.run("ip -4 -o addr show dev eth0")[0], timeout=12,
                 interval=0.5, what="the DHCP lease (udhcpc asks again every few seconds)")
        finally:
            dns.terminate()
            dns.wait(10)
    host.xm("destroy", "dh")


# ------------------------------------------------------------ enable-dump
def test_enable_dump_dumps_a_crashed_domains_core(make_host):
    h = make_host("(accel tcg)\n(enable-dump yes)\n")
    h.xm("create", str(h.config("cr", on_crash="destroy")))
    with h.console("cr") as con:
        con.login()
        con.send("echo c > /proc/sysrq-trigger\r")
    poll(lambda: "cr" not in h.domains(), timeout=120, what="the crashed domain to be destroyed")
    cores = list((h.root / "var/xen/dump").glob("*-cr.*.core"))
    assert len(cores) == 1 and cores[0].stat().st_size > 64 << 20
