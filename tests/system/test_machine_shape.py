"""The machine a domain booted on outlives vcpu-set and mem-set (issue 15,
item 2): ``xm vcpu-set`` changes the vCPUs online, never the maximum; a
save carries the machine QEMU runs, so the restore rebuilds it and the
saved guest comes back.  A real TCG guest."""

from __future__ import annotations


def online(con) -> str:
    return con.run("cat /sys/devices/system/cpu/online")[0].strip()


def test_vcpu_set_down_then_save_and_restore(make_host):
    h = make_host("(accel tcg)\n")
    h.xm("create", str(h.config("shape", vcpus=2, memory=128)))     # no maxvcpus, no maxmem
    with h.console("shape") as con:
        con.login()
        h.xm("vcpu-set", "shape", "1")
        assert online(con) == "0"
        h.xm("vcpu-set", "shape", "2")           # the maximum is still the boot's 2
        assert online(con) == "0-1"
        h.xm("vcpu-set", "shape", "1")
        h.xm("mem-set", "shape", "96")
        con.run("echo before-save > /tmp/mark")
    row = h.domains()["shape"]
    assert (row["vcpus"], row["mem"]) == (1, 96)

    save = h.root / "shape.save"
    h.xm("save", "shape", str(save))
    assert "shape" not in h.domains()
    h.xm("restore", str(save))               # QEMU rebuilt with 2 vCPUs and 128 MiB
    row = h.domains()["shape"]
    assert (row["vcpus"], row["mem"]) == (1, 96)
    with h.console("shape") as con:
        con.login()
        assert con.run("cat /tmp/mark")[0].strip() == "before-save"    # the same guest, not rebooted
        assert con.run("cat /sys/devices/system/cpu/present")[0].strip() == "0-1"
        assert online(con) == "0"
        h.xm("vcpu-set", "shape", "2")
        assert online(con) == "0-1"
    h.xm("destroy", "shape")
