"""xm qemu-monitor's filter (pyxen/xend/monitorfilter.py): commands that
start programs or open host paths are refused unless host access is on."""

from __future__ import annotations

import pytest

from pyxen.xend.monitorfilter import refusal

REFUSED = [
    'migrate "exec:id > /tmp/x"',
    "migrate exec:id",
    "migrate\texec:id",
    "migrate -d file:/tmp/x",
    "migrate -d 'unix:/tmp/s'",
    "MIGRATE exec:id",
    "migrate_incoming exec:cat /tmp/x",
    "drive_add 0 if=none,id=x,file=/etc/shadow",
    "drive_add -n 0 if=none,id=x,file=/etc/shadow",
    'drive_add 0 "if=none,id=x,file=/etc/shadow"',
    "dump-guest-memory /tmp/core",
    "dump-guest-memory -z /tmp/core",
    "pmemsave 0 4096 /tmp/m",
    "memsave 0 4096 /tmp/m",
    "chardev-add file,id=c,path=/tmp/x",
    "chardev-add pipe,id=c,path=/tmp/p",
    "chardev-add socket,id=c,path=/tmp/s,server=on",
    "chardev-add tty,id=c,path=/dev/tty1",
    "chardev-change c file,path=/tmp/y",
    "netdev_add tap,id=n,script=/bin/sh",
    "netdev_add tap,id=n,downscript=/tmp/evil",
    "netdev_add bridge,id=n,br=br0",
    "netdev_add tap,id=n,helper=/usr/lib/qemu/qemu-bridge-helper",
    "object_add memory-backend-file,id=m,mem-path=/tmp,size=1M",
    "object_add qom-type=memory-backend-file,id=m,mem-path=/tmp,size=1M",
    "object_add secret,id=s,file=/etc/shadow",
    "object_add tls-creds-x509,id=t,dir=/root/.ssh",
    "object_add rng-random,id=r,filename=/dev/mem",
    "device_add loader,file=/etc/shadow,addr=0x1000",
    "device_add e1000,romfile=/etc/shadow",
    "device_add usb-host,hostbus=1,hostaddr=2",
    "change ide1-cd0 /etc/passwd",
    "logfile /tmp/log",
    "trace-file set /tmp/t",
    "snapshot_blkdev d-xvda /tmp/snap.qcow2",
    "drive_mirror d-xvda /tmp/m.img",
    "wavcapture /tmp/a.wav snd0",
    "gdbserver /dev/ttyS0",
    "nbd_server_start unix:/tmp/nbd",
]

ALLOWED = [
    "info status",
    "screendump /tmp/a.ppm",          # by descriptor: xend/screendump.py
    "info block",
    "stop",
    "cont",
    "sendkey ctrl-alt-delete",
    "migrate -d tcp:10.0.0.2:4444",
    "migrate fd:pyxen-migrate",
    "drive_add 0 if=none,id=x",
    "netdev_add tap,id=n,ifname=vif1.1,script=no,downscript=no",
    "netdev_add user,id=u",
    "object_add memory-backend-ram,id=m,size=1M",
    "chardev-add socket,id=s,host=127.0.0.1,port=4444,server=on",
    "chardev-add null,id=n",
    "device_add e1000,id=n2,netdev=n",
    "device_add e1000,romfile=",
    "change vnc password",
    "nbd_server_start 127.0.0.1:10809",
    "",
]


@pytest.mark.parametrize("line", REFUSED)
def test_refused(line):
    why = refusal(line)
    assert why and why.startswith("qemu-monitor: '") and "(qemu-monitor-host-access yes)" in why
    assert "\n" not in why


@pytest.mark.parametrize("line", ALLOWED)
def test_allowed(line):
    assert refusal(line) is None


@pytest.mark.parametrize("line", REFUSED[:5])
def test_host_access_lets_everything_through(line):
    assert refusal(line, host_access=True) is None


def test_screendump_arguments():
    from pyxen.xend import screendump
    from pyxen.xend.errors import InvalidRequest
    assert screendump.is_screendump("screendump /tmp/a.ppm") and not screendump.is_screendump("screendumpx /a")
    assert screendump._split('screendump "/tmp/a b.png" -f png') == ("/tmp/a b.png", ["-f", "png"])
    with pytest.raises(InvalidRequest, match="usage: screendump FILE"):
        screendump._split("screendump")
