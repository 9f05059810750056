"""The save-file format and its I/O workers (pyxen.xend.checkpoint), and
the restore side of the QEMU argv.  Nothing here starts QEMU."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import time

import pytest

from pyxen.config.domain import DomainConfig
from pyxen.hypervisor.qemu import argv as qargv
from pyxen.xend import checkpoint as ck

CONFIG = "(vm (name demo) (memory 128) (uuid 5a3b0e62-3f7a-4f4e-9d4c-2f0c61d4e6a1))"
META = {"qemu": "7.2.22", "machine": "pc-i440fx-7.2", "accel": "tcg", "paused": False}
STREAM = bytes(range(256)) * 64 + b"QEVM-end"


def make(tmp_path, stream: bytes = STREAM, name="d.chk", algorithm=ck.ALGORITHM, **kw) -> tuple:
    head = ck.encode_header(kw.get("config", CONFIG), kw.get("meta", META), len(stream),
                            ck.new_hash(algorithm, stream).digest(), algorithm)
    p = tmp_path / name
    p.write_bytes(head + stream)
    return p, head


def test_round_trip_and_xen_compatible_start(tmp_path):
    p, head = make(tmp_path)
    raw = p.read_bytes()
    # Xen's part: signature, big-endian length, the config SXP.
    assert raw[:16] == b"LinuxGuestRecord"
    (n,) = struct.unpack(">i", raw[16:20])
    assert raw[20:20 + n].decode() == CONFIG
    info = ck.read_header(str(p))
    assert info.config == CONFIG and info.meta == META and info.version == 1
    assert info.algorithm == "xxh3-128" and len(info.stream_digest) == 16
    meta_len = len(json.dumps(META, sort_keys=True, separators=(",", ":")))
    assert info.stream_offset == len(head) == ck.header_size(len(CONFIG), meta_len)
    assert raw[info.stream_offset:] == STREAM and info.stream_length == len(STREAM)
    assert ck.Verifier(info).run() is True


def test_sha256_files_read_too(tmp_path):
    p, head = make(tmp_path, algorithm="sha256")
    info = ck.read_header(str(p))
    assert info.algorithm == "sha256" and info.stream_digest == hashlib.sha256(STREAM).digest()
    assert ck.Verifier(info).run() is True


def test_every_truncation_is_reported_as_such(tmp_path):
    p, head = make(tmp_path)
    raw = p.read_bytes()
    cuts = list(range(1, len(head) + 2)) + [len(raw) // 2, len(raw) - 1]
    for cut in cuts:
        p.write_bytes(raw[:cut])
        with pytest.raises(ck.SaveFileError, match="truncated"):
            ck.read_header(str(p))


def test_every_damaged_header_byte_is_caught(tmp_path):
    p, head = make(tmp_path)
    raw = p.read_bytes()
    for i in range(len(head)):
        bad = bytearray(raw)
        bad[i] ^= 0x04
        p.write_bytes(bad)
        with pytest.raises(ck.SaveFileError) as e:
            ck.read_header(str(p))
        assert str(p) in str(e.value)


def test_damaged_or_extended_stream(tmp_path):
    p, head = make(tmp_path)
    raw = p.read_bytes()
    bad = bytearray(raw)
    bad[len(head) + 1000] ^= 0x80
    p.write_bytes(bad)
    info = ck.read_header(str(p))       # the header is fine ...
    assert ck.Verifier(info).run() is False   # ... the stream is not
    p.write_bytes(raw + b"x")
    with pytest.raises(ck.SaveFileError, match="1 bytes follow the end"):
        ck.read_header(str(p))


def test_foreign_files(tmp_path):
    p = tmp_path / "f"
    for data, msg in ((b"", "is empty"),
                      (b"\x7fELF\x02\x01\x01" + b"\0" * 40,
                       "not a valid guest state file: it does not start with the 'LinuxGuestRecord'"),
                      (b"LinuxGuestRecord" + struct.pack(">i", -5), "impossible config length -5")):
        p.write_bytes(data)
        with pytest.raises(ck.SaveFileError, match=msg):
            ck.read_header(str(p))
    # A Xen save file: Xen's header, then libxenguest's page stream.
    xen = b"LinuxGuestRecord" + struct.pack(">i", len(CONFIG)) + CONFIG.encode() + b"\x11" * 4096
    p.write_bytes(xen)
    with pytest.raises(ck.SaveFileError, match="Xen save file"):
        ck.read_header(str(p))
    with pytest.raises(ck.SaveFileError, match="Unable to read save file .*No such file"):
        ck.read_header(str(tmp_path / "missing"))
    with pytest.raises(ck.SaveFileError, match=r"not a regular file \(it is a directory\)"):
        ck.read_header(str(tmp_path))


def test_machine_type_cannot_smuggle_qemu_options(tmp_path):
    p, _ = make(tmp_path, meta=dict(META, machine="pc,memory-backend=x"))
    with pytest.raises(ck.SaveFileError, match="bad machine type"):
        ck.read_header(str(p))


def test_newer_format_version_is_refused(tmp_path):
    p, head = make(tmp_path)
    raw = bytearray(p.read_bytes())
    a = 20 + len(CONFIG)
    assert raw[a:a + 16] == ck.RECORD_MAGIC
    raw[a + 16:a + 20] = struct.pack(">I", 2)
    p.write_bytes(raw)
    with pytest.raises(ck.SaveFileError, match="version 2; this pyxen reads version 1"):
        ck.read_header(str(p))


def test_follower_hashes_a_growing_file(tmp_path):
    path = tmp_path / "growing"
    data = os.urandom(5 << 20) + b"tail"
    out = open(path, "wb")
    out.write(b"H" * 100)            # the header's place
    out.flush()
    fol = ck.Follower(str(path), 100)
    res = []
    t = threading.Thread(target=lambda: res.append(fol.run()))
    t.start()
    # Odd-sized writes, with pauses in which the follower catches up.
    for i in range(0, len(data), 300_001):
        out.write(data[i:i + 300_001])
        out.flush()
        if i % 3 == 0:
            time.sleep(0.003)
    out.close()
    fol.finish(100 + len(data))
    t.join(10)
    assert res == [ck.new_hash(ck.ALGORITHM, data).digest()]


def test_follower_cancel_and_short_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    fol = ck.Follower(str(path), 0)
    res = []
    t = threading.Thread(target=lambda: res.append(fol.run()))
    t.start()
    fol.cancel()
    t.join(10)
    assert res == [None]
    fol = ck.Follower(str(path), 0)
    fol.finish(2000)                  # QEMU claims more than the file holds
    with pytest.raises(OSError, match="shorter than the stream"):
        fol.run()


def test_argv_for_a_restore(tmp_path):
    cfg = DomainConfig.from_values({"name": "r", "kernel": "/k", "memory": 64,
                                    "disk": ["file:/d.img,xvda,w"]})
    rt = qargv.Runtime(domid=3, run_dir=tmp_path, console_log=tmp_path / "c", accel="tcg")
    boot = qargv.build(cfg, rt)
    rt.incoming, rt.machine = "defer", "pc-i440fx-7.2"
    restore = qargv.build(cfg, rt)
    assert restore[restore.index("-incoming") + 1] == "defer"
    assert restore[restore.index("-machine") + 1] == "pc-i440fx-7.2"
    # Apart from those two, the device layout is the very same command line.
    strip = [a for i, a in enumerate(restore)
             if a not in ("-incoming", "defer") and restore[i - 1] != "-machine" and a != "-machine"]
    assert strip == [a for i, a in enumerate(boot) if boot[i - 1] != "-machine" and a != "-machine"]
    assert "-incoming" not in boot


@pytest.mark.parametrize("secret", [b"root:$6$s3cr3tHASH:19000:0:99999:7:::\n",
                                    b"-----BEGIN PRIVATE KEY-----\nMIIEv\n", b"Linux" + b"k" * 64])
def test_a_foreign_file_is_never_echoed(tmp_path, secret):
    p = tmp_path / "shadow"
    p.write_bytes(secret)
    with pytest.raises(ck.SaveFileError) as e:
        ck.read_header(str(p))
    msg = str(e.value)
    assert "signature" in msg
    for piece in (secret[:16], secret[:8], secret[2:12], b"s3cr3t", b"MIIE", b"kkkk"):
        assert piece.decode("latin-1") not in msg.replace(str(p), "")


def test_special_files_are_refused_without_blocking(tmp_path):
    import os
    import stat as st
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)                 # nobody ever writes: opening it blocking would hang
    dev = tmp_path / "zero"
    os.mknod(dev, 0o600 | st.S_IFCHR, os.makedev(1, 5))
    (tmp_path / "dir").mkdir()
    for p, kind in ((fifo, "a FIFO"), (dev, "a character device"), (tmp_path / "dir", "a directory")):
        with pytest.raises(ck.SaveFileError, match=f"not a regular file \\(it is {kind}\\)"):
            ck.read_header(str(p))
