"""Issue 4 end to end: virtual block devices on real guests (TCG), through xm and xend.

One guest boots from a file-backed root named the Xen way (sda1) and carries
the checks that need a running guest: read-only exports, qcow2, sparse
files, the sharing guard across an xend restart, hotplug of a file and of
an NBD export served by qemu-nbd, and a file written in the guest then read
on the image from the host.  Other domains in these tests are created
paused: they hold their disks (so they count for the guard) without paying
for a boot.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from pyxen.storage import lvm
from pyxen.testing.wait import poll
from pyxen.testing.ports import free_port



def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def make_root_disk(image: Path, workdir: Path) -> Path:
    """An ext4 image holding the initramfs tree (mkfs.ext4 -d: no loop mount)."""
    initrd = (image / "initrd.img").read_bytes()
    for magic, argv in {b"\x02\x21\x4c\x18": ["lz4", "-dc"], b"\x28\xb5\x2f\xfd": ["zstd", "-dcq"],
                        b"\x1f\x8b": ["gzip", "-dc"], b"\xfd7zXZ": ["xz", "-dc"]}.items():
        if initrd.startswith(magic):
            initrd = subprocess.run(argv, input=initrd, capture_output=True, check=True).stdout
    root = workdir / "rootfs"
    root.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=initrd, cwd=root, check=True)
    (root / "etc" / "marker").write_text("pyxen root disk marker\n")
    disk = sparse(workdir / "root.img", 48 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(disk)], check=True)
    shutil.rmtree(root)
    return disk


def guest_dev_gone_or_there(con, name: str, there: bool) -> bool:
    out, rc = con.run(f"test -b /dev/{name} && echo yes || echo no")
    return out.strip() == ("yes" if there else "no")


def logout(con) -> None:
    """Leave the guest shell (getty prompts again) and detach: xend is about to restart."""
    con.send("exit\r")
    con.close()


def test_file_root_ro_qcow2_guard_hotplug_nbd(host, tmp_path):
    work = tmp_path
    root = make_root_disk(host.image, work)
    ro = sparse(work / "ro.img", 8 << 20)
    with open(ro, "r+b") as f:
        f.write(b"read-only marker\n")
    q2 = work / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(q2), "64M"], check=True)
    big = sparse(work / "big.img", 1 << 30)          # 1 GiB, must stay sparse
    alias = work / "alias.img"
    alias.symlink_to(root)

    cfg = host.config("vbd", disk=[f"file:{root},sda1,w", f"file:{ro},sdc,r", f"tap:qcow2:{q2},sdb,w",
                                   f"tap:aio:{big},xvdd,w"],
                      root="/dev/sda1 ro")
    host.xm("create", str(cfg))
    con = host.console("vbd")
    con.login()
    out, rc = con.run("cat /etc/marker; grep ' / ' /proc/mounts")
    assert rc == 0 and "pyxen root disk marker" in out, out
    assert re.search(r"^/dev/sda1 / ext4 ro", out, re.M), out
    # Every disk under the name the config gave it.
    out, _ = con.run("for d in sda1 sdb sdc xvdd; do readlink /dev/$d; done")
    assert len(out.split()) == 4 and all(x.startswith("vd") for x in out.split()), out
    # A read-only export is read-only in the guest: flagged ro, writes fail.
    out, rc = con.run("cat /sys/class/block/$(readlink /dev/sdc)/ro; head -c 16 /dev/sdc")
    assert out.split("\n")[0] == "1" and "read-only marker" in out, out
    _, rc = con.run("echo x | dd of=/dev/sdc bs=512 count=1 conv=sync 2>/dev/null")
    assert rc != 0
    # qcow2 is written through QEMU's format driver; a big sparse file stays sparse.
    _, rc = con.run("echo qcow2-data | dd of=/dev/sdb bs=512 count=1 conv=sync 2>/dev/null && sync")
    assert rc == 0
    _, rc = con.run("echo tail | dd of=/dev/xvdd bs=512 seek=2000000 count=1 conv=sync 2>/dev/null && sync")
    assert rc == 0
    assert os.stat(big).st_size == 1 << 30 and os.stat(big).st_blocks * 512 < 4 << 20

    # --- the sharing guard
    other = host.config("other", disk=[f"file:{alias},sda1,w"])
    res = host.xm("create", str(other), check=False)
    assert res.returncode != 0
    assert re.search(rf"Disk file:{alias} \(sda1\) cannot be given to domain other: it is already "
                     r"exported read-write to domain vbd as sda1", res.stderr), res.stderr
    assert "Traceback" not in res.stderr and "other" not in host.domains()
    # Read-only sharing is allowed (a paused domain holds the disk all the same).
    shared = host.config("shared", disk=[f"file:{ro},sda1,r"])
    host.xm("create", "-p", str(shared))
    # ...but nobody may now take that image read-write, not even the first guest.
    res = host.xm("block-attach", "vbd", f"file:{ro}", "sde", "w", check=False)
    assert res.returncode != 0 and "already exported read-only to " in res.stderr, res.stderr
    # The guard survives an xend restart: the adopted domains still hold their disks.
    logout(con)
    host.xend("stop")
    host.xend("start")
    res = host.xm("create", str(other), check=False)
    assert res.returncode != 0 and "exported read-write to domain vbd" in res.stderr, res.stderr
    # w! overrides, with a warning in xend's log.
    forced = host.config("forced", disk=[f"file:{alias},sda1,w!"])
    host.xm("create", "-p", str(forced))
    xend_log = (host.root / "var/log/xen/xend.log").read_text()
    assert re.search(r"WARNING.*forced: disk file:.*alias.img \(sda1\).*w!", xend_log), \
        [x for x in xend_log.splitlines() if "forced" in x or "WARN" in x]
    host.xm("destroy", "forced")
    host.xm("destroy", "shared")

    # --- hotplug a file, and an NBD export through QEMU's own NBD client
    hot = sparse(work / "hot.img", 16 << 20)
    host.xm("block-attach", "vbd", f"file:{hot}", "sde", "w")
    nbd_img = sparse(work / "nbd.img", 8 << 20)
    with open(nbd_img, "r+b") as f:
        f.write(b"served over nbd\n")
    port = free_port()
    pidfile = work / "qemu-nbd.pid"
    # --fork returns once qemu-nbd listens: no polling for the port.
    subprocess.run(["qemu-nbd", "-f", "raw", "-p", str(port), "-b", "127.0.0.1", "-t", "--read-only",
                    "--fork", "--pid-file", str(pidfile), str(nbd_img)], check=True, timeout=30)
    try:
        host.xm("block-attach", "vbd", f"nbd:127.0.0.1:{port}", "sdf", "r")
        con = host.console("vbd")
        con.login()
        poll(lambda: guest_dev_gone_or_there(con, "sde", True), 60, what="sde in the guest")
        poll(lambda: guest_dev_gone_or_there(con, "sdf", True), 60, what="sdf in the guest")
        out, _ = con.run("head -c 15 /dev/sdf")
        assert out == "served over nbd", out
        _, rc = con.run("echo hot-data | dd of=/dev/sde bs=512 count=1 conv=sync 2>/dev/null && sync")
        assert rc == 0
        rows = host.xm("block-list", "vbd").stdout.splitlines()
        assert rows[0].split() == ["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"]
        assert {r.split()[0] for r in rows[1:]} == {"2049", "2064", "2080", "51760", "2112", "2128"}
        assert "nbd:127.0.0.1" in host.xm("block-list", "-l", "vbd").stdout
        # The hot-plugged disks are in the persisted config (they survive restarts).
        logout(con)
        host.xend("stop")
        host.xend("start")
        con = host.console("vbd")
        con.login()
        assert f"file:{hot}" in host.xm("block-list", "-l", "vbd").stdout
        host.xm("block-detach", "vbd", "sdf")
        host.xm("block-detach", "vbd", "2112")          # sde by its device number
        poll(lambda: guest_dev_gone_or_there(con, "sde", False), 60, what="sde to go")
        assert guest_dev_gone_or_there(con, "sdf", False)
        assert "sde" not in host.xm("block-list", "-l", "vbd").stdout
        res = host.xm("block-detach", "vbd", "sde", check=False)
        assert res.returncode != 0 and "Device sde not connected to domain vbd" in res.stderr
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
    assert hot.read_bytes()[:8] == b"hot-data"
    # Once detached, the image is free for another domain read-write.
    host.xm("create", "-p", str(host.config("reuse", disk=[f"file:{hot},sda1,w"])))
    host.xm("destroy", "reuse")

    # --- write on the root filesystem, shut down, read it from the host
    out, rc = con.run("mount -o remount,rw / && echo written-in-guest > /etc/from-guest && sync "
                      "&& head -c 9 /dev/sdb")
    assert rc == 0 and out == "qcow2-dat", out
    con.close()
    host.xm("shutdown", "-w", "vbd", timeout=120)
    got = subprocess.run(["debugfs", "-R", "cat /etc/from-guest", str(root)], capture_output=True, text=True)
    assert got.stdout == "written-in-guest\n", got.stdout + got.stderr
    fsck = subprocess.run(["e2fsck", "-fn", str(root)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    raw = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -v 0 10", str(q2)],
                         capture_output=True, text=True).stdout
    assert "71 63 6f 77 32 2d 64 61 74 61" in raw, raw      # "qcow2-data"


def test_bad_specs_are_clear_errors(host, tmp_path):
    img = sparse(tmp_path / "x.img", 1 << 20)
    cases = [
        (f"file:{img},sda1", "expected 'type:target,vdev,mode'"),
        (f"file:{img},sda1,rw", "Invalid mode 'rw'"),
        (f"bogus:{img},sda1,w", "unknown type 'bogus'"),
        (f"file:{img},floppy,w", "bad virtual device 'floppy'"),
        (f"tap:nope:{img},sda1,w", "unknown tap driver 'nope'"),
        (f"file:{tmp_path}/missing.img,sda1,w", "missing.img does not exist"),
        (f"phy:{img},sda1,w", "is not a block device"),
    ]
    for spec, msg in cases:
        cfg = host.config("bad", disk=[spec])
        res = host.xm("create", str(cfg), check=False)
        assert res.returncode != 0, spec
        assert msg in res.stderr and "Traceback" not in res.stderr, (spec, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = host.xm("create", str(host.config("bad", disk=[f"file:{img},sda1,w", f"file:{img},sda1,r"])),
                  check=False)
    assert res.returncode != 0 and "sda1 is used twice" in res.stderr, res.stderr
    assert "bad" not in host.domains()
    # block-attach validates the same way, on a (paused) domain.
    host.xm("create", "-p", str(host.config("ok", disk=[])))
    res = host.xm("block-attach", "ok", f"file:{img}", "sdb", "rw", check=False)
    assert res.returncode != 0 and "Invalid mode 'rw'" in res.stderr, res.stderr
    res = host.xm("block-attach", "ok", "file:", "sdb", "w", check=False)
    assert res.returncode != 0 and "file: needs a path" in res.stderr, res.stderr
    assert "sdb" not in host.xm("block-list", "-l", "ok").stdout


@pytest.fixture
def fake_lv(tmp_path):
    """A loop device standing in at /dev/<vg>/<lv> (this kernel has no device-mapper)."""
    img = sparse(tmp_path / "lv.img", 16 << 20)
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True,
                          check=True).stdout.strip()
    vg = Path(f"/dev/pxvg{os.getpid()}")
    vg.mkdir()
    (vg / "lv0").symlink_to(loop)
    yield vg.name, img, loop
    shutil.rmtree(vg)
    subprocess.run(["losetup", "-d", loop])


def test_phy_vg_lv_and_its_backing_file_are_one_disk(host, fake_lv):
    vg, img, loop = fake_lv
    host.xm("create", "-p", str(host.config("lvdom", disk=[f"phy:{vg}/lv0,sda1,w"])))
    assert f"phy:{vg}/lv0" in host.xm("block-list", "-l", "lvdom").stdout
    # The same storage through the loop device or the image file is refused.
    for spec in (f"phy:{loop},sda1,r", f"file:{img},sda1,w"):
        res = host.xm("create", "-p", str(host.config("lv2", disk=[spec])), check=False)
        assert res.returncode != 0 and "exported read-write to domain lvdom" in res.stderr, (spec, res.stderr)
    host.xm("destroy", "lvdom")
    host.xm("create", "-p", str(host.config("lv2", disk=[f"file:{img},sda1,w"])))


def test_host_rw_mount_refuses_rw_export(host, tmp_path):
    img = sparse(tmp_path / "m.img", 16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        res = host.xm("create", "-p", str(host.config("m", disk=[f"file:{img},sda1,w"])), check=False)
        assert res.returncode != 0 and f"mounted read-write on the host at {mnt}" in res.stderr, res.stderr
        host.xm("create", "-p", str(host.config("m", disk=[f"file:{img},sda1,r"])))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_real_lvm_snapshot_clone(host, tmp_path):
    """Real LVM: a volume and its CoW snapshot clone, each given to a domain.

    Needs the kernel's device-mapper and lvm2; this machine has no
    device-mapper, so here it checks only that the snapshot helper refuses
    plainly, and says it could not run the rest.
    """
    ok, why = lvm.dm_available()
    if not ok or shutil.which("vgcreate") is None:
        with pytest.raises(lvm.LvmError, match="device-mapper is not available|lvcreate"):
            lvm.snapshot("pxvg", "root", "clone")
        pytest.skip(f"cannot run real LVM here: {why or 'lvm2 is not installed'}")
    vg = f"pxvg{os.getpid()}"
    img = sparse(tmp_path / "pv.img", 256 << 20)
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        subprocess.run(["pvcreate", "-q", loop], check=True)
        subprocess.run(["vgcreate", "-q", vg, loop], check=True)
        subprocess.run(["lvcreate", "-q", "-L", "64M", "-n", "root", vg], check=True)
        snap = lvm.snapshot(vg, "root", "clone", "32M")
        assert Path(snap).exists()
        host.xm("create", "-p", str(host.config("orig", disk=[f"phy:{vg}/root,sda1,w"])))
        host.xm("create", "-p", str(host.config("clone", disk=[f"phy:{vg}/clone,sda1,w"])))
        res = host.xm("create", "-p", str(host.config("again", disk=[f"phy:{vg}/clone,sda1,w"])),
                      check=False)
        assert res.returncode != 0 and "exported read-write to domain clone" in res.stderr
        host.xm("destroy", "orig")
        host.xm("destroy", "clone")
    finally:
        subprocess.run(["vgremove", "-q", "-f", vg])
        subprocess.run(["pvremove", "-q", loop])
        subprocess.run(["losetup", "-d", loop])


# ------------------------------------------------------------------ NFS root
GANESHA_CONF = """\
NFS_CORE_PARAM {{ Protocols = 4; NFS_Port = 2049; Enable_NLM = false; Enable_RQUOTA = false; }}
NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = {recov}; Only_Numeric_Owners = true; }}
EXPORT {{
    Export_Id = 1; Path = {export}; Pseudo = {export}; Access_Type = RW; Squash = No_Root_Squash;
    Protocols = 4; Transports = TCP; SecType = sys;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""


@pytest.fixture
def netns():
    """A network namespace for xend, its bridge and the NFS server; removed with all it ran."""
    name = f"pxnfs{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    yield name
    for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "del", name])


def test_nfs_root_static_ip_and_dhcp(make_host, netns, tmp_path):
    """root='/dev/nfs' with nfs_server/nfs_root, served by nfs-ganesha (userspace:
    this host's kernel has no nfsd), once with ip/netmask on a bridge and once
    with dhcp='dhcp' behind vif-nat."""
    if shutil.which("ganesha.nfsd") is None:
        pytest.fail("nfs-ganesha is not installed (make deps installs it)")
    nsx = ("ip", "netns", "exec", netns)
    subprocess.run([*nsx, "ip", "link", "add", "nfsbr0", "type", "bridge"], check=True)
    subprocess.run([*nsx, "ip", "addr", "add", "10.44.0.1/24", "dev", "nfsbr0"], check=True)
    subprocess.run([*nsx, "ip", "link", "set", "nfsbr0", "up"], check=True)
    host = make_host(netns=netns)
    export = tmp_path / "export"
    export.mkdir()
    initrd = (host.image / "initrd.img").read_bytes()
    cpio = subprocess.run(["lz4", "-dc"], input=initrd, capture_output=True, check=True).stdout \
        if initrd.startswith(b"\x02\x21\x4c\x18") else initrd
    subprocess.run(["cpio", "-idm", "--quiet"], input=cpio, cwd=export, check=True)
    (export / "etc" / "marker").write_text("pyxen nfs root\n")
    (tmp_path / "recov").mkdir()
    conf = tmp_path / "ganesha.conf"
    conf.write_text(GANESHA_CONF.format(export=export, recov=tmp_path / "recov"))
    log = tmp_path / "ganesha.log"
    subprocess.Popen([*nsx, "ganesha.nfsd", "-F", "-f", str(conf), "-L", str(log),
                      "-p", str(tmp_path / "ganesha.pid")])
    poll(lambda: ":2049 " in subprocess.run([*nsx, "ss", "-ltn"], capture_output=True, text=True).stdout,
         30, what="nfs-ganesha to listen")

    host.xm("create", str(host.config("nfsstatic", root="/dev/nfs", nfs_server="10.44.0.1",
                                      nfs_root=str(export), ip="10.44.0.2", netmask="255.255.255.0",
                                      hostname="nfsstatic", vif=["bridge=nfsbr0"], extra="rw")))
    with host.console("nfsstatic") as con:
        con.login()
        out, rc = con.run("cat /etc/marker; grep ' / ' /proc/mounts")
        assert rc == 0 and "pyxen nfs root" in out, out
        assert re.search(r"^10\.44\.0\.1:\S+ / nfs4? rw", out, re.M), out
        _, rc = con.run("echo from-static-guest > /root-written && sync")
        assert rc == 0
    assert (export / "root-written").read_text() == "from-static-guest\n"
    host.xm("destroy", "nfsstatic")

    # DHCP: vif-nat hands the guest 10.0.<domid>.1 and is itself 10.0.<domid>.254,
    # where the same namespace's NFS server answers.
    # Domain ids are never reused, so this second guest is domain 2.
    cfg = host.config("nfsdhcp", root="/dev/nfs", nfs_server="10.0.2.254", nfs_root=str(export),
                      dhcp="dhcp", vif=["script=vif-nat"])
    host.xm("create", str(cfg))
    assert host.domains()["nfsdhcp"]["id"] == 2, host.domains()
    with host.console("nfsdhcp") as con:
        con.login()
        out, rc = con.run("cat /etc/marker; ip -4 addr show eth0; grep ' / ' /proc/mounts")
        assert rc == 0 and "pyxen nfs root" in out and "inet 10.0.2.1/" in out, out
    host.xm("destroy", "nfsdhcp")
