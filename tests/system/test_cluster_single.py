"""The cluster commands on a host with no cluster configured, with a real
guest (TCG): host-list and host-evacuate say one line, list --cluster shows
this host's domains with a Host column, create --host accepts only this
host's name and leaves nothing behind otherwise, plain xm list unchanged.

The three-host tests (placement across hosts, failover, evacuation) need
xend joined to etcd, which the cluster branch adds; see docs/cluster.md."""

from __future__ import annotations

from pyxen.xm import format as fmt


def test_cluster_commands_without_a_cluster(host):
    me = next(line.split(":", 1)[1].strip() for line in host.xm("info").stdout.splitlines()
              if line.split(":", 1)[0].strip() == "host")
    res = host.xm("host-list", check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "Error: not in a cluster (xend-cluster-etcd is not set in xend-config.sxp)"]
    res = host.xm("host-evacuate", me, check=False)
    assert res.returncode == 1 and "not in a cluster" in res.stderr and "Traceback" not in res.stderr

    host.config("cl1", on_host_failure="restart")
    res = host.xm("create", "cl1", "--host", "elsewhere", check=False)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "Error: not in a cluster (xend-cluster-etcd is not set in xend-config.sxp): cannot create "
        f"domain cl1 on host elsewhere (this host is {me})")
    assert "cl1" not in host.domains() and host.qemu_pids() == []       # no half-made domain

    res = host.xm("create", "cl1", "--host", me)
    assert "Started domain cl1" in res.stdout
    with host.console("cl1") as con:
        con.wait_login_prompt()

    out = host.xm("list", "--cluster").stdout.splitlines()
    assert out[0] == fmt.LIST_HEADER + " Host"
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert set(rows) == {"Domain-0", "cl1"}
    assert rows["cl1"][6] == me and rows["Domain-0"][6] == me
    # the first six fields are plain xm list's, whose layout is unchanged
    plain = host.xm("list").stdout.splitlines()
    assert plain[0] == fmt.LIST_HEADER
    assert [line.split()[:3] for line in plain[1:]] == [rows[n][:3] for n in ("Domain-0", "cl1")]
    assert "(on_host_failure restart)" in host.xm("list", "-l", "cl1").stdout
    res = host.xm("list", "--cluster", "cl1", check=False)
    assert res.returncode == 1 and "takes no -l and no domain" in res.stderr
