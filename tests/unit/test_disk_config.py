"""Disk-related config and argv: NFS root parameters, the QEMU nodes of each disk type."""

import json

import pytest

from pyxen.config.domain import DomainConfig
from pyxen.config.errors import ConfigError
from pyxen.config.specs import parse_disk
from pyxen.hypervisor.qemu import argv as qargv


def test_nfs_root_becomes_nfsroot_argument_and_survives_sxp():
    cfg = DomainConfig.from_values({"name": "n", "kernel": "/k", "root": "/dev/nfs", "nfs_server": "10.0.0.1",
                                    "nfs_root": "/srv/guest", "ip": "10.0.0.2", "netmask": "255.255.255.0",
                                    "extra": "rw"})
    assert cfg.kernel_args() == ("ip=10.0.0.2:10.0.0.1::255.255.255.0::eth0:off root=/dev/nfs "
                                 "nfsroot=10.0.0.1:/srv/guest rw")
    assert DomainConfig.from_sxp(cfg.to_sxp()).kernel_args() == cfg.kernel_args()
    with pytest.raises(ConfigError, match="nfs_root: an NFS root needs nfs_server"):
        DomainConfig.from_values({"name": "n", "kernel": "/k", "nfs_root": "/srv/guest"})
    with pytest.raises(ConfigError, match="absolute path"):
        DomainConfig.from_values({"name": "n", "kernel": "/k", "nfs_server": "h", "nfs_root": "srv"})


@pytest.mark.parametrize("spec, proto, fmt", [
    ("file:/img,sda1,w", {"driver": "file", "filename": "/img", "aio": "threads"}, "raw"),
    ("phy:vg/lv,sda1,r", {"driver": "host_device", "filename": "/dev/vg/lv", "read-only": True}, "raw"),
    ("tap:aio:/img,xvda,w", {"driver": "file"}, "raw"),
    ("tap:qcow2:/q.img,xvda,w", {"driver": "file", "filename": "/q.img"}, "qcow2"),
    ("qcow2:/q.img,xvda,w", {"driver": "file"}, "qcow2"),
    ("nbd:127.0.0.1:10809,xvdb,r", {"driver": "nbd", "server": {"type": "inet", "host": "127.0.0.1",
                                                                  "port": "10809"}}, "raw"),
    ("file:/img,hda,w!", {"driver": "file", "locking": "off"}, "raw"),
])
def test_disk_nodes(spec, proto, fmt):
    d = parse_disk(spec)
    p, f = qargv.disk_nodes(d)
    assert proto.items() <= p.items()
    assert p["node-name"] == f"f-{d.vdev}" and f == {"driver": fmt, "file": f"f-{d.vdev}",
                                                      "node-name": f"d-{d.vdev}", "read-only": d.readonly}
    assert qargv.disk_device(d) == f"virtio-blk-pci,drive=d-{d.vdev},serial={d.vdev},id=vbd-{d.vdev}"
    json.dumps(p)
