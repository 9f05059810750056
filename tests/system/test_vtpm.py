"""vTPM (``vtpm = ['instance=N,backend=0']``): a TPM 2.0 in a real guest,
backed by swtpm, its state kept by xend.

The guest talks to /dev/tpm0 with raw TPM 2.0 commands written by the
shell (the default image has no tpm2-tools): TPM2_PCR_Extend puts a value
in PCR 16 (volatile state: it must survive xend restarts and
save/restore, which carries it in QEMU's stream), and TPM2_ReadClock gives
the TPM's resetCount, which the TPM keeps in its persistent state and
increments at every boot: it must keep growing across guest reboots and
across destroying and creating the domain again.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from pyxen.testing.wait import poll

DIGEST = hashlib.sha256(b"pyxen vtpm test").digest()
PCR = 16


def _tpm(con, cmd: bytes) -> bytes:
    # The command must reach the TPM in one write(): busybox's echo does
    # that, its printf writes piecemeal.
    esc = "".join(f"\\0{b:03o}" for b in cmd)
    out, rc = con.run(f"exec 3<>/dev/tpm0; echo -ne '{esc}' >&3; dd bs=4096 count=1 <&3 2>/dev/null "
                      f"| od -An -v -tx1; exec 3>&-")
    assert rc == 0, out
    resp = bytes.fromhex("".join(out.split()))
    assert len(resp) >= 10 and resp[6:10] == b"\0\0\0\0", f"TPM error response {resp.hex()}"
    return resp


def pcr_extend(con, pcr: int, digest: bytes) -> None:
    # TPM2_PCR_Extend with an empty password session (TPM_RS_PW).
    auth = struct.pack(">IHBH", 0x40000009, 0, 0, 0)
    body = struct.pack(">II", 0x182, pcr) + struct.pack(">I", len(auth)) + auth + \
        struct.pack(">IH", 1, 0x000B) + digest
    _tpm(con, struct.pack(">HI", 0x8002, 6 + len(body)) + body)


def reset_count(con) -> int:
    resp = _tpm(con, struct.pack(">HII", 0x8001, 10, 0x181))         # TPM2_ReadClock
    return struct.unpack(">I", resp[26:30])[0]


def pcr_value(con, pcr: int) -> bytes:
    out, rc = con.run(f"cat /sys/class/tpm/tpm0/pcr-sha256/{pcr}")
    assert rc == 0, out
    return bytes.fromhex(out.strip())


def swtpm_pids(host) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("swtpm\0") and f"{host.root}/" in cmd:
                pids.append(int(d.name))
    return pids


EXTENDED = hashlib.sha256(b"\0" * 32 + DIGEST).digest()


def test_vtpm_state_survives_reboot_xend_restart_save_restore_and_recreate(host, tmp_path):
    cfg = host.config("tpm1", vtpm=["instance=1,backend=0"])
    host.xm("create", str(cfg))
    assert len(swtpm_pids(host)) == 1
    out = host.xm("vtpm-list", "tpm1").stdout
    assert out.splitlines()[0].startswith("Idx  BE handle state")
    with host.console("tpm1") as con:
        con.login()
        out, rc = con.run("ls /dev/tpm0 /dev/tpmrm0 && cat /sys/class/tpm/tpm0/tpm_version_major")
        assert rc == 0 and out.split()[-1] == "2", out
        first = reset_count(con)
        assert pcr_value(con, PCR) == b"\0" * 32
        pcr_extend(con, PCR, DIGEST)
        assert pcr_value(con, PCR) == EXTENDED

    # xend goes away and comes back: the guest keeps its swtpm (same
    # process, so the volatile PCR value too), and xend adopts it.
    pids = swtpm_pids(host)
    host.xend("restart")
    assert swtpm_pids(host) == pids
    with host.console("tpm1") as con:
        con.login()
        assert pcr_value(con, PCR) == EXTENDED

    # Save and restore: QEMU's stream carries the TPM state into a fresh swtpm.
    save = tmp_path / "tpm1.chk"
    host.xm("save", "tpm1", str(save))
    poll(lambda: not swtpm_pids(host), 20, what="the swtpm to stop with the saved domain")
    host.xm("restore", str(save))
    new = swtpm_pids(host)
    assert len(new) == 1 and new != pids
    with host.console("tpm1") as con:
        con.login()
        assert pcr_value(con, PCR) == EXTENDED
        assert reset_count(con) == first

    # A guest reboot resets the TPM (PCRs clear) but keeps its persistent state.
    host.xm("reboot", "tpm1")
    with host.console("tpm1") as con:
        poll(lambda: _rebooted(con), 120, interval=1, what="the guest to reboot")
        con.login()
        assert reset_count(con) == first + 1
        assert pcr_value(con, PCR) == b"\0" * 32

    # Destroyed and created again: the same instance's state is still there.
    host.xm("destroy", "tpm1")
    assert swtpm_pids(host) == []
    host.xm("create", str(cfg))
    with host.console("tpm1") as con:
        con.login()
        assert reset_count(con) >= first + 2
    host.xm("destroy", "tpm1")
    assert swtpm_pids(host) == []


def _rebooted(con) -> bool:
    try:
        con.wait_login_prompt(timeout=5)
        return True
    except AssertionError:
        return False


def test_vtpm_instance_cannot_be_shared(host):
    host.xm("create", str(host.config("tpma", vtpm=["instance=4,backend=0"])))
    res = host.xm("create", str(host.config("tpmb", vtpm=["instance=4"])), check=False)
    assert res.returncode == 1 and res.stderr.startswith("Error: vTPM instance 4 is in use by domain tpma"), \
        res.stderr
    assert "tpmb" not in host.domains()
    assert len(swtpm_pids(host)) == 1
    # xl's form is accepted too.
    host.xm("create", str(host.config("tpmc", vtpm=["backend=0,uuid=6f1c7a3e-4a0b-4a39-9d2f-2e4d6c1b0a55"])))
    assert len(swtpm_pids(host)) == 2


@pytest.mark.parametrize("spec, needle", [
    ("instance=x", "instance must be a number"),
    ("backend=3", "only Domain-0"),
    ("bogus=1", "unknown key 'bogus'"),
])
def test_bad_vtpm_spec(host, spec, needle):
    res = host.xm("create", str(host.config("badtpm", vtpm=[spec])), check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr and needle in res.stderr, res.stderr
    assert set(host.domains()) == {"Domain-0"}
