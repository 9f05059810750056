"""Bad input: one clear line, non-zero exit, nothing half-made, no traceback."""

from __future__ import annotations

import subprocess

from pyxen.testing import state


def assert_clean_error(res, *needles, code=1):
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    err = res.stderr.strip()
    assert err.startswith("Error: "), err
    for n in needles:
        assert n in err, (n, err)


def assert_nothing_left(host):
    assert set(host.domains()) == {"Domain-0"}
    assert host.qemu_pids() == []
    assert not state.runtime_records(host.root)


def test_missing_kernel(host):
    cfg = host.config("nokernel", kernel="/nonexistent/vmlinuz")
    res = host.xm("create", str(cfg), check=False)
    assert_clean_error(res, "kernel image does not exist: /nonexistent/vmlinuz")
    assert_nothing_left(host)


def test_bad_config_names_file_and_line(host):
    cfg = host.root / "etc/xen/broken"
    cfg.write_text('name = "broken"\nmemory = 64\nkernel = (\n')
    res = host.xm("create", str(cfg), check=False)
    assert_clean_error(res, f"Errors were found at line 3 while processing {cfg}")
    cfg.write_text('name = "broken"\nmemory = "lots"\n')
    res = host.xm("create", str(cfg), check=False)
    assert_clean_error(res, "memory", "lots")
    cfg.write_text('name = "broken"\nkernel = "/k"\ndisk = ["file:/x,sda1,q"]\n')
    res = host.xm("create", str(cfg), check=False)
    assert_clean_error(res, "Invalid disk specifier", "Invalid mode")
    res = host.xm("create", "no-such-config", check=False)
    assert_clean_error(res, "Unable to open config file: no-such-config")
    res = host.xm("create", "xmexample2", "vmid=0", check=False)
    assert_clean_error(res, "vmid")
    assert_nothing_left(host)


def test_qemu_failure_leaves_nothing(host):
    # A kernel file QEMU cannot boot: QEMU itself refuses, xend rolls back.
    bogus = host.root / "bogus-kernel"
    bogus.write_bytes(b"\0" * 4096)
    res = host.xm("create", str(host.config("bogus", kernel=str(bogus))), check=False)
    assert_clean_error(res, "QEMU failed to start domain bogus")
    assert_nothing_left(host)


def test_name_in_use(host):
    host.xm("create", str(host.config("twice")))
    domid = host.domains()["twice"]["id"]
    res = host.xm("create", str(host.config("twice")), check=False)
    assert_clean_error(res, f"Domain 'twice' already exists with ID '{domid}'")
    assert len(host.qemu_pids()) == 1
    assert host.domains()["twice"]["id"] == domid


def test_unknown_domain_exits_3(host):
    for cmd in ("destroy", "pause", "unpause", "shutdown", "domid", "console"):
        res = host.xm(cmd, "ghost", check=False)
        assert_clean_error(res, "Domain 'ghost' does not exist.", code=3)
    res = host.xm("list", "ghost", check=False)
    assert_clean_error(res, "does not exist", code=3)
    assert_clean_error(host.xm("destroy", "0", check=False), "Domain 0 cannot be destroyed")


def test_xend_not_running(make_host):
    h = make_host(start=False)
    res = h.xm("list", check=False)
    assert_clean_error(res, "Unable to connect to xend", "Is xend running?")
    assert h.xend("status", check=False).returncode == 3


def test_bad_commands_no_traceback(host):
    assert_clean_error(host.xm("frobnicate", check=False), "Subcommand frobnicate not found!")
    assert_clean_error(host.xm("list", "-x", check=False), "option -x not recognized")
    assert_clean_error(host.xm("pause", check=False), "'xm pause' requires 1 argument")
    res = host.xm(check=False)
    assert res.returncode == 1 and res.stdout.startswith("Usage: xm <subcommand>")
    assert "xm full list of subcommands:" in host.xm("help", "--long").stdout
    assert host.xm("help", "create").stdout.startswith("Usage: xm create")
    assert host.xm("li").stdout.startswith("Name")          # unique prefix


def test_two_roots_never_see_each_other(make_host):
    a, b = make_host(), make_host()
    a.xm("create", str(a.config("onlya")))
    assert "onlya" in a.domains()
    assert "onlya" not in b.domains()
    assert b.qemu_pids() == []
    # Same name on the other host is fine: they are separate hosts.
    b.xm("create", str(b.config("onlya")))
    assert len(a.qemu_pids()) == 1 and len(b.qemu_pids()) == 1


def test_bad_xend_config_refuses_to_start(make_host):
    h = make_host("(accel fast)\n", start=False)
    res = h.xend("start", check=False)
    assert res.returncode == 1
    assert "xend-config.sxp: (accel ...): expected one of auto, kvm, tcg, got 'fast'" in res.stderr
    assert "Traceback" not in res.stderr
    assert h.xend("status", check=False).returncode == 3


def test_fresh_root_layout(make_host):
    h = make_host(start=False)
    (h.root / "etc/xen/xend-config.sxp").unlink()
    h.xend("start")
    etc = h.root / "etc/xen"
    text = (etc / "xend-config.sxp").read_text()
    assert "#(accel auto)" in text and "#(xend-relocation-port 8002)" in text
    for ex in ("xmexample1", "xmexample2"):
        assert f"{h.image}/vmlinuz" in (etc / ex).read_text()
    for d in ("etc/xen/auto", "var/lib/pyxen", "var/run/pyxen", "var/log/xen"):
        assert (h.root / d).is_dir(), d
    assert (h.root / "var/log/xen/xend.log").stat().st_size > 0
    assert (h.root / "var/run/pyxen/xend.sock").stat().st_mode & 0o077 == 0   # root-only
    # A second xend on the same root is refused; the first keeps running.
    res = h.run("xend", "foreground")
    assert res.returncode == 1 and "another xend is running" in res.stderr
    assert h.xend("status", check=False).returncode == 0
