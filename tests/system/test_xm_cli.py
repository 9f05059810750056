"""xm's command line: create switches, layouts against a live xend, junk input."""

from __future__ import annotations

import concurrent.futures
import random
import re

import pexpect

from pyxen.xm.commands import COMMANDS


def test_create_dryrun_quiet_paused_sxp_and_path(host):
    etc = host.root / "etc/xen"
    cfg = host.config("dry")
    res = host.xm("create", "-n", "dry")
    assert res.stdout.startswith(f'Using config file "./{cfg.relative_to(host.root)}".') or \
        res.stdout.startswith('Using config file "')
    sxp_text = res.stdout.split("\n", 1)[1]
    assert sxp_text.startswith("(vm\n    (name dry)\n    (memory 128)\n")
    assert "Domain-0" in host.domains() and "dry" not in host.domains()     # nothing started
    assert host.qemu_pids() == []

    # --path finds configs elsewhere; -q prints nothing; -p leaves it paused.
    other = host.root / "elsewhere"
    other.mkdir()
    (other / "pq").write_text(cfg.read_text().replace("'dry'", "'pq'"))
    res = host.xm("create", "-q", "-p", "--path", str(other), "pq")
    assert res.stdout == ""
    assert host.domains()["pq"]["state"] == "--p---"
    host.xm("unpause", "pq")
    with host.console("pq") as con:
        con.wait_login_prompt()

    # -F: a ready SXP config (the one -n printed, renamed).
    sxp_file = host.root / "dry.sxp"
    sxp_file.write_text(sxp_text.replace("(name dry)", "(name fromsxp)"))
    res = host.xm("create", "-F", str(sxp_file))
    assert "Started domain fromsxp" in res.stdout
    # -f names the Python config explicitly, var=value overrides it.
    res = host.xm("create", "-f", str(cfg), "name=viaf", "memory=96")
    assert "Started domain viaf" in res.stdout
    assert host.domains()["viaf"]["mem"] == 96
    long = host.xm("list", "-l", "viaf").stdout
    assert "    (memory 96)\n" in long and "(domid " in long

    # --help_config lists every variable with its type.
    helptext = host.xm("create", "--help_config").stdout
    for var in ("kernel=STR", "memory=INT", "disk=LIST", "vif=LIST", "on_crash=STR", "vncunused=INT"):
        assert var in helptext, var


def test_create_console_autoconnect(host):
    cfg = host.config("autocon")
    child = pexpect.spawn("xm", ["create", "-c", str(cfg)], env=host.env, timeout=120)
    child.expect("Started domain autocon")
    child.expect("pyxen-init: started")
    child.expect("login: ")
    child.send("\x1d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "autocon" in host.domains()


def test_vcpu_list_pin_and_sched_credit_layouts(host):
    host.xm("create", str(host.config("cpus", vcpus=2, cpus="0")))
    out = host.xm("vcpu-list", "cpus").stdout.splitlines()
    assert out[0] == "Name                                ID  VCPU   CPU State   Time(s) CPU Affinity"
    rows = [ln.split() for ln in out[1:]]
    assert [r[2] for r in rows] == ["0", "1"]
    assert all(r[-1] == "0" for r in rows)            # the config's cpus="0"
    host.xm("vcpu-pin", "cpus", "1", "1")
    rows = [ln.split() for ln in host.xm("vcpu-list", "cpus").stdout.splitlines()[1:]]
    assert rows[1][-1] == "1" and rows[0][-1] == "0"
    host.xm("vcpu-pin", "cpus", "all", "all")
    assert host.xm("vcpu-list", "cpus").stdout.count("any cpu") == 2
    res = host.xm("vcpu-pin", "cpus", "0", "7-9", check=False)
    assert res.returncode == 1 and "names no CPU of this host" in res.stderr

    out = host.xm("sched-credit", "-d", "cpus").stdout.splitlines()
    assert out[0] == "Name                                ID Weight  Cap"
    assert out[1].split() == ["cpus", out[1].split()[1], "256", "0"]
    host.xm("sched-credit", "-d", "cpus", "-w", "512", "-c", "50")
    assert host.xm("sched-credit", "-d", "cpus").stdout.splitlines()[1].split()[2:] == ["512", "50"]
    long = host.xm("list", "-l", "cpus").stdout
    assert "(cpu_weight 512)" in long and "(cpu_cap 50)" in long
    res = host.xm("sched-credit", "-d", "cpus", "-w", "heavy", check=False)
    assert res.returncode == 1 and "weight must be an integer" in res.stderr


def test_block_list_layout(host, tmp_path):
    imgs = [host.root / "a.img", host.root / "b.img"]
    for img in imgs:
        with open(img, "wb") as f:
            f.truncate(8 << 20)
    host.xm("create", str(host.config("blk", disk=[f"file:{imgs[0]},xvda1,w", f"file:{imgs[1]},hdb,r"])))
    out = host.xm("block-list", "blk").stdout.splitlines()
    assert out[0] == "Vdev  BE handle state evt-ch ring-ref BE-path "
    assert [ln.split()[0] for ln in out[1:]] == ["51713", "832"]
    assert all(ln.split()[3] == "4" for ln in out[1:])    # connected
    assert "(virtual-device 51713)" in host.xm("block-list", "-l", "blk").stdout
    res = host.xm("block-list", "9999", check=False)
    assert res.returncode == 3 and res.stderr.startswith("Error:")
    # A domain without disks (or vifs) prints nothing, as Xen's xm did (xm-test).
    host.xm("create", str(host.config("nodisk")))
    assert host.xm("block-list", "nodisk").stdout == ""
    assert host.xm("network-list", "nodisk").stdout == ""


JUNK = ["-x", "--bogus", "0", "-1", "9999", "Domain-0", "ghost", "", "''", "-l", "--long", "a=b",
        "vmid=", "=", "--path", "/dev/null", "-w", "-c", "--help_config", "☃", "%s", "\\", "all"]


def test_every_command_with_junk_arguments_never_tracebacks(host):
    rnd = random.Random(1234)
    calls = []
    for name in sorted(COMMANDS):
        for n in range(0, 11):
            args = [rnd.choice(JUNK + [f"junk{rnd.randint(0, 99)}"]) for _ in range(n)]
            if name == "create":
                args = [a for a in args if a not in ("-c",)]   # never attach a console here
            # Commands that follow forever are bounded (their junk still parsed).
            if name == "events":
                args += ["-n", "0"]
            if name == "top":
                args += ["-i", "1", "-d", "0.1"]
            calls.append((name, args))

    def check(call):
        name, args = call
        res = host.xm(name, *args, check=False, timeout=60)
        assert "Traceback" not in res.stdout + res.stderr, (name, args, res.stderr)
        if res.returncode != 0:
            assert res.stderr.startswith("Error: ") or res.stdout.startswith("Usage:"), \
                (name, args, res.stdout, res.stderr)
        return 1

    # Three at a time: each is a separate xm process (mostly interpreter
    # start-up), and none of them may change anything another one sees —
    # which the last assertion checks.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        seen = sum(pool.map(check, calls))
    assert seen == 11 * len(COMMANDS)
    assert set(host.domains()) == {"Domain-0"}     # junk created nothing


def test_deprecated_alias_and_prefix(host):
    host.xm("create", str(host.config("alias")))
    res = host.xm("vbd-list", "alias")
    assert "Command vbd-list is deprecated.  Please use xm block-list instead." in res.stderr
    assert res.stdout == ""        # no disks: not even the header, as Xen's xm
    res = host.xm("vcpus-set", "alias", "1")       # the manual's spelling (ch. 7)
    assert res.returncode == 0 and res.stderr == ""
    res = host.xm("lsit", check=False)
    assert res.returncode == 1 and res.stderr.startswith("Error: Subcommand lsit not found!  Did you mean 'xm list'?")
    assert re.match(r"Name\s+ID", host.xm("vcpu-l", "alias").stdout)    # unique prefix
    res = host.xm("vcpu", "alias", check=False)                          # ambiguous prefix
    assert res.returncode == 1 and "Subcommand vcpu not found!" in res.stderr
