"""xm save / xm restore end to end (issue 6): real guests under TCG.

A guest counter (a shell loop appending 1, 2, 3 ... to a file on the
guest's tmpfs every 0.1 s) shows the guest carried on rather than rebooted:
after a restore the file must still hold an unbroken run from 1, longer
than before, and still growing; the console log must show the guest's init
starting exactly once.

The full-disk case uses an 8 MiB tmpfs mounted for the test (and unmounted
after it) as the save directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess


from pyxen import storekeys
from pyxen.testing import state
from pyxen.testing.wait import poll

COUNTER = ("(i=0; while :; do i=$((i+1)); echo $i >> /tmp/count; usleep 100000; done) "
           ">/dev/null 2>&1 & :")
MAC = "00:16:3e:5a:7e:01"




def assert_clean_error(res, *needles, code=1):
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    err = res.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, (n, err)


def counts(con) -> list[int]:
    out, rc = con.run("cat /tmp/count")
    assert rc == 0, out
    return [int(x) for x in out.split()]


def assert_counting_on(host, name: str, before: int) -> int:
    """The counter file is an unbroken 1..n run with n > before, and grows."""
    with host.console(name) as con:
        con.login()
        seq = counts(con)
        assert seq == list(range(1, len(seq) + 1)), seq[-20:]
        assert len(seq) > before, (len(seq), before)
        n = len(seq)
        poll(lambda: len(counts(con)) >= n + 3, 30, what="the counter to keep counting")
    return n


def console_log(host, name: str) -> str:
    return (host.root / f"var/log/xen/console/guest-{name}.log").read_text(errors="replace")


def start_counter(host, name: str, extra: str = "") -> int:
    with host.console(name) as con:
        con.login()
        if extra:
            _, rc = con.run(extra)
            assert rc == 0
        _, rc = con.run(COUNTER)
        assert rc == 0
        poll(lambda: len(counts(con)) >= 5, 30, what="the counter to start")
        return len(counts(con))


def uuid_of(host, name: str) -> str:
    return re.search(r"\(uuid (\S+)\)", host.xm("list", "-l", name).stdout).group(1)



def test_save_restore_round_trip(host, bridge, tmp_path):
    disk = host.root / "data.img"
    disk.write_bytes(b"\0" * (4 << 20))
    host.xm("create", str(host.config("sr", disk=[f"file:{disk},xvdb,w"], vif=[f"mac={MAC}, bridge={bridge}"])))
    domid = host.domains()["sr"]["id"]
    uuid = uuid_of(host, "sr")
    before = start_counter(host, "sr", "echo before-save | dd of=/dev/xvdb bs=512 count=1 conv=sync,fsync")
    assert disk.read_bytes()[:12] == b"before-save\n"

    # Saving into a full filesystem fails cleanly and the guest runs on.
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(full)], check=True)
    try:
        for args in (["sr"], ["-c", "sr"]):
            res = host.xm("save", *args, str(full / "sr.chk"), check=False, timeout=120)
            assert_clean_error(res, "No space left on device", "still running")
            assert os.listdir(full) == []            # no partial file, no temp file
            row = host.domains()["sr"]
            assert row["id"] == domid and "p" not in row["state"]
    finally:
        subprocess.run(["umount", str(full)], check=True)
    before = assert_counting_on(host, "sr", before)

    # Bad targets are refused before anything happens.
    res = host.xm("save", "sr", str(tmp_path / "no/such/dir/f"), check=False)
    assert_clean_error(res, "Unable to create save file", "does not exist")
    res = host.xm("save", "sr", str(tmp_path), check=False)
    assert_clean_error(res, "is a directory")
    res = host.xm("save", "nosuchdom", str(tmp_path / "x"), check=False)
    assert_clean_error(res, "Domain 'nosuchdom' does not exist", code=3)
    res = host.xm("save", "0", str(tmp_path / "x"), check=False)
    assert_clean_error(res, "Domain 0 cannot be saved")

    # xm save: the domain goes away, the file is Xen-shaped and private.
    chk = tmp_path / "sr.chk"
    # xm resolves a relative name against its own cwd (xend's is /).
    subprocess.run(["xm", "save", "sr", "sr.chk"], cwd=tmp_path, env=host.env, check=True, timeout=120)
    assert "sr" not in host.domains()
    assert host.qemu_pids() == []
    raw = chk.read_bytes()
    assert raw[:16] == b"LinuxGuestRecord"
    n = int.from_bytes(raw[16:20], "big")
    assert raw[20:20 + n].startswith(b"(vm (name sr)")
    assert chk.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # xm restore: same name, uuid, MAC and disk; a new id; no reboot.
    host.xm("restore", str(chk), timeout=120)
    row = host.domains()["sr"]
    assert row["id"] > domid and "p" not in row["state"]
    assert uuid_of(host, "sr") == uuid
    long = host.xm("list", "-l", "sr").stdout
    assert f"(mac {MAC})" in long and f"(uname file:{disk})" in long
    before = assert_counting_on(host, "sr", before)
    assert console_log(host, "sr").count("pyxen-init: started") == 1
    with host.console("sr") as con:
        con.login()
        out, rc = con.run("dd if=/dev/xvdb bs=12 count=1 2>/dev/null; "
                          "echo after-restore | dd of=/dev/xvdb bs=512 count=1 conv=sync,fsync")
        assert rc == 0 and out.startswith("before-save"), out
    assert disk.read_bytes()[:14] == b"after-restore\n"
    # The file is kept, and restoring it again while the domain runs is refused.
    res = host.xm("restore", str(chk), check=False)
    assert_clean_error(res, f"Domain 'sr' already exists with ID '{row['id']}'")

    # xm save -c: a checkpoint; the domain runs on under the same id.
    cp = tmp_path / "sr.cp"
    host.xm("save", "-c", "sr", str(cp), timeout=120)
    assert host.domains()["sr"]["id"] == row["id"]
    assert_counting_on(host, "sr", before)
    # A paused domain checkpoints and stays paused, again and again.
    host.xm("pause", "sr")
    for i in range(2):
        host.xm("save", "-c", "sr", str(tmp_path / f"paused{i}"), timeout=120)
        assert host.domains()["sr"]["state"] == "--p---"
    host.xm("destroy", "sr")
    # ... which restores paused with -p, and continues from the checkpoint.
    host.xm("restore", "-p", str(cp), timeout=120)
    assert host.domains()["sr"]["state"] == "--p---"
    host.xm("unpause", "sr")
    assert_counting_on(host, "sr", before)
    assert console_log(host, "sr").count("pyxen-init: started") == 1
    host.xm("destroy", "sr")
    assert host.qemu_pids() == []


def test_bad_save_files_are_refused(host, tmp_path):
    host.xm("create", str(host.config("bad")))
    with host.console("bad") as con:
        con.wait_login_prompt()
    good = tmp_path / "bad.chk"
    host.xm("save", "bad", str(good), timeout=120)
    raw = good.read_bytes()
    n = int.from_bytes(raw[16:20], "big")

    def refused(data: bytes | None, *needles, name="f.chk"):
        f = tmp_path / name
        if data is not None:
            f.write_bytes(data)
        res = host.xm("restore", str(f), check=False, timeout=120)
        assert_clean_error(res, str(f), *needles)
        assert set(host.domains()) == {"Domain-0"}
        assert host.qemu_pids() == []
        assert not state.domain_records(host.root)

    refused(None, "Unable to read save file", "No such file", name="missing.chk")
    refused(b"", "is empty")
    refused(b"#!/bin/sh\necho not a save file\n" * 10, "not a valid guest state file", "signature")
    # What was found is never shown: the file may be any root-readable one.
    res = host.xm("restore", "/etc/shadow", check=False, timeout=120)
    assert_clean_error(res, "/etc/shadow", "not a valid guest state file")
    assert "root:" not in res.stdout + res.stderr
    # A FIFO nobody writes to is refused at once, not waited on.
    os.mkfifo(tmp_path / "fifo.chk")
    refused(None, "not a regular file (it is a FIFO)", name="fifo.chk")
    # Xen's own layout, with an xc_save image after the config: not ours.
    refused(raw[:20 + n] + b"\x00\x01\x02\x03" * 4096, "Xen save file")
    for cut in (10, 20 + n // 2, 20 + n + 8, 20 + n + 60, len(raw) // 2, len(raw) - 1):
        refused(raw[:cut], "truncated")
    refused(raw + b"\0", "corrupt", "follow the end")
    flipped = bytearray(raw)
    flipped[20 + raw[20:20 + n].index(b"(memory 128)") + 9] ^= 0x01  # (memory 138)
    refused(bytes(flipped), "corrupt", "header checksum")
    # One flipped bit in the QEMU state: QEMU may even load it, but the
    # guest must never run from it.
    for where in (len(raw) - 3000, len(raw) * 2 // 3):
        flipped = bytearray(raw)
        flipped[where] ^= 0x10
        refused(bytes(flipped), "corrupt", "checksum of its QEMU state does not match")

    # The good file was never touched and still restores.
    assert good.read_bytes() == raw
    host.xm("restore", str(good), timeout=120)
    with host.console("bad") as con:
        con.login()
        out, rc = con.run("echo alive")
        assert (out, rc) == ("alive\n", 0)
    assert console_log(host, "bad").count("pyxen-init: started") == 1


def test_save_is_a_job_and_survives_xend_crash(host, tmp_path):
    host.xm("create", str(host.config("job")))
    domid = host.domains()["job"]["id"]
    before = start_counter(host, "job")
    [qemu] = host.qemu_pids()
    target = tmp_path / "job.chk"
    saver = subprocess.Popen(["xm", "save", "job", str(target)], env=host.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Freeze QEMU as soon as the save has begun: the save cannot finish.
        tmp = poll(lambda: [p for p in tmp_path.iterdir() if p.name.endswith(".pyxen-save")],
                   30, 0.001, "the save's temp file")
        os.kill(qemu, signal.SIGSTOP)
        # xm list keeps answering; other operations on the domain are refused.
        assert host.domains()["job"]["id"] == domid
        for op in ("pause", "destroy", "unpause"):
            assert_clean_error(host.xm(op, "job", check=False), "busy", "save in progress")
        # xend dies mid-save.
        xend = int((host.root / "var/run/pyxen/xend.pid").read_text())
        os.kill(xend, signal.SIGKILL)
        out, err = saver.communicate(timeout=30)
        assert saver.returncode == 1 and "Traceback" not in err and err.startswith("Error: "), err
    finally:
        os.kill(qemu, signal.SIGCONT)
        if saver.poll() is None:
            saver.kill()
            saver.wait()
    poll(lambda: not os.path.exists(f"/proc/{xend}"), 10, what="xend to die")
    assert tmp[0].exists()

    # The next xend rolls the save back: no file, and the guest runs on.
    host.xend("start")
    row = host.domains()["job"]
    assert row["id"] == domid and "p" not in row["state"]
    assert host.qemu_pids() == [qemu]
    assert list(tmp_path.iterdir()) == []
    assert_counting_on(host, "job", before)

    # A save that passed its commit point (file complete, not yet renamed)
    # is finished by the next xend: the file appears, the domain is gone.
    cp = tmp_path / "job.cp"
    host.xm("save", "-c", "job", str(cp), timeout=120)
    host.xend("stop")
    pending = tmp_path / ".job.final.x.pyxen-save"
    cp.rename(pending)
    with state.open_store(host.root, writable=True) as store:     # xend is stopped
        [key] = store.keys(storekeys.runtime_prefix(store.host))
        rec = store.get_json(key)
        rec["job"] = {"op": "save", "phase": "commit", "file": str(tmp_path / "job.final"),
                      "tmp": str(pending), "resume": True, "checkpoint": False}
        store.put_json(key, rec)
    host.xend("start")
    assert "job" not in host.domains()
    assert host.qemu_pids() == []
    assert list(tmp_path.iterdir()) == [tmp_path / "job.final"]
    host.xm("restore", str(tmp_path / "job.final"), timeout=120)
    assert_counting_on(host, "job", before)
