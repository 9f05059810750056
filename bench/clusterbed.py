"""A cluster to benchmark on: a three-member etcd (TLS) and three xends, each
in a network namespace of its own joined by veths to a hub bridge
(:mod:`pyxen.testing.clusternet`, the system tests' network), real TCG
guests.  Used by bench/clusterfail.py (host failures) and bench/cluster.py
(``xm list --cluster``).

Each xend runs with the given cluster timings (None: xend's defaults, which
is what the committed figures use).  Everything is torn down by
:meth:`Bed.close`, even after a partial start: the xends and guests, every
process left in the namespaces (ClusterNet.cleanup kills them by PID), the
etcd members (by the PIDs this run started), the roots under /tmp.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from pyxen import pki
from pyxen.paths import Paths
from pyxen.testing import clusternet
from pyxen.testing import etcd as etcdtest

from .harness import Harness, kill_qemus_under


class Node:
    """One xend host: its root, namespace and address."""

    def __init__(self, name: str, root: Path, ns: str, ip: str, net: clusternet.ClusterNet):
        self.name, self.root, self.ns, self.ip, self.net = name, root, ns, ip, net
        self.env = dict(os.environ, PYXEN_ROOT=str(root))

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)

    def xm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.run("xm", *args, timeout=timeout)

    def xend_start(self) -> None:
        res = self.run("ip", "netns", "exec", self.ns, "xend", "start")
        if res.returncode != 0:
            raise RuntimeError(f"xend on {self.name} did not start: {res.stderr.strip()}")

    def domains(self) -> list[str]:
        res = self.xm("list")
        return [ln.split()[0] for ln in res.stdout.splitlines()[1:] if ln.split()] if res.returncode == 0 else []

    def console_log(self, dom: str) -> Path:
        return self.root / "var/log/xen/console" / f"guest-{dom}.log"

    def kill_everything(self) -> int:
        """The machine dies: SIGKILL every process in this host's namespace
        (xend, its lease keeper, its QEMUs).  Returns how many."""
        return self.net.kill_all(self.ns)


class Bed(Harness):
    def __init__(self, names=("a", "b", "c"), ttl: int | None = None, margin: int | None = None,
                 grace: int | None = None):
        self.names = names
        self.timings = {"xend-cluster-lease-ttl": ttl, "xend-cluster-fence-margin": margin,
                        "xend-cluster-grace": grace}
        self.root = Path(tempfile.mkdtemp(prefix="pxcb", dir="/tmp"))     # short: socket paths
        self.image = Paths.from_env().default_image
        self.net: clusternet.ClusterNet | None = None
        self.etcd: etcdtest.EtcdCluster | None = None
        self.probe = ""
        self.nodes: dict[str, Node] = {}

    def start(self) -> None:
        why = etcdtest.available()
        if why:
            raise RuntimeError(why)
        self.net = clusternet.ClusterNet()
        spaces, addrs = [], []
        for i in range(3):
            ns, ip = self.net.add(f"e{i}", 11 + i)
            spaces.append(ns)
            addrs.append(ip)
        self.probe, _ = self.net.add("probe", 250)
        self.etcd = etcdtest.EtcdCluster(self.root / "etcd", 3, spaces, addrs)
        self.etcd.start()
        extra = "".join(f"({k} {v})\n" for k, v in self.timings.items() if v is not None)
        for j, name in enumerate(self.names):
            ns, ip = self.net.add(name, 21 + j)
            self.net.exec(ns, "ip", "link", "add", "xenbr0", "type", "bridge")
            self.net.exec(ns, "ip", "link", "set", "xenbr0", "up")
            root = self.root / name
            (root / "etc/xen").mkdir(parents=True)
            (root / "etc/xen/xend-config.sxp").write_text(
                f"(accel tcg)\n(xend-relocation-server yes)\n(xend-relocation-address '{ip}')\n"
                f"(xend-cluster-etcd '{' '.join(self.etcd.endpoints)}')\n(xend-cluster-name '{name}')\n"
                + extra)
            pki.make_host_cert(self.etcd.pki, name, ips=[ip], out=root / "etc/xen/pki")
            self.nodes[name] = Node(name, root, ns, ip, self.net)
        for n in self.nodes.values():
            n.xend_start()

    def config(self, name: str, **values) -> Path:
        v = {"name": name, "kernel": str(self.image / "vmlinuz"), "ramdisk": str(self.image / "initrd.img"),
             "memory": 128}
        v.update(values)
        path = self.nodes[self.names[0]].root / "etc/xen" / name
        path.write_text("".join(f"{k} = {val!r}\n" for k, val in v.items()))
        return path

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.etcd.etcdctl(*args, ns=self.probe)

    def hosts_up(self, via: Node) -> set[str]:
        res = via.xm("host-list")
        return {ln.split()[0] for ln in res.stdout.splitlines()[1:] if len(ln.split()) > 2 and ln.split()[2] == "up"}

    def close(self) -> None:
        for n in self.nodes.values():
            try:
                if n.run("xend", "status").returncode == 0:
                    for d in n.domains():
                        if d != "Domain-0":
                            n.xm("destroy", d)
                    n.run("xend", "stop")
            except (OSError, subprocess.SubprocessError):
                pass
        if self.net is not None:
            self.net.cleanup()          # every process left in the namespaces (keepers too), by PID
        for n in self.nodes.values():
            kill_qemus_under(n.root)
        if self.etcd is not None:
            self.etcd.remove()
        shutil.rmtree(self.root, ignore_errors=True)


class MemberWatch:
    """``etcdctl watch --prefix cluster/members/`` from the probe namespace
    (an observer independent of pyxen): when each host's record was
    deleted (its lease gone), on this process's monotonic clock."""

    def __init__(self, bed: Bed):
        self.proc = bed.etcd.etcdctl("watch", "--prefix", "cluster/members/", ns=bed.probe, popen=True)
        self.deleted: dict[str, float] = {}
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        kind = None
        for line in self.proc.stdout:
            line = line.strip()
            if line in ("PUT", "DELETE"):
                kind = line
            elif line.startswith("cluster/members/") and kind == "DELETE":
                self.deleted[line[len("cluster/members/"):]] = time.monotonic()
                kind = None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
