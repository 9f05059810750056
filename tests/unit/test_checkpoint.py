"""The save-file format and its I/O workers (pyxen.xend.checkpoint), and
the restore side of the QEMU argv.  Nothing here starts QEMU."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import struct
import threading

import pytest

from pyxen.config.domain import DomainConfig
from pyxen.hypervisor.qemu import argv as qargv
from pyxen.xend import checkpoint as ck

CONFIG = "(vm (name demo) (memory 128) (uuid 5a3b0e62-3f7a-4f4e-9d4c-2f0c61d4e6a1))"
META = {"qemu": "7.2.22", "machine": "pc-i440fx-7.2", "accel": "tcg", "paused": False}
STREAM = bytes(range(256)) * 64 + b"QEVM-end"


def make(tmp_path, stream: bytes = STREAM, name="d.chk", **kw) -> tuple:
    head = ck.encode_header(kw.get("config", CONFIG), kw.get("meta", META), len(stream),
                            hashlib.sha256(stream).digest())
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
    assert info.algorithm == "sha256"
    assert info.stream_offset == len(head) == ck.header_size(len(CONFIG), len(head) - ck.header_size(len(CONFIG), 0))
    assert raw[info.stream_offset:] == STREAM and info.stream_length == len(STREAM)
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
    for data, msg in ((b"", "found an empty file"),
                      (b"\x7fELF\x02\x01\x01" + b"\0" * 40,
                       re.escape("not a valid guest state file: found '\\x7fELF\\x02")),
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
    with pytest.raises(ck.SaveFileError, match="Unable to read save file .*: Is a directory"):
        ck.read_header(str(tmp_path))


def test_newer_format_version_is_refused(tmp_path):
    p, head = make(tmp_path)
    raw = bytearray(p.read_bytes())
    a = 20 + len(CONFIG)
    assert raw[a:a + 16] == ck.RECORD_MAGIC
    raw[a + 16:a + 20] = struct.pack(">I", 2)
    p.write_bytes(raw)
    with pytest.raises(ck.SaveFileError, match="version 2; this pyxen reads version 1"):
        ck.read_header(str(p))


def test_pump_copies_and_hashes_at_an_offset(tmp_path):
    r, w = os.pipe()
    out = os.open(tmp_path / "o", os.O_RDWR | os.O_CREAT)
    pump = ck.Pump(r, out, 100)
    data = os.urandom(3 << 20)

    def feed():
        with open(w, "wb") as f:
            f.write(data)
    t = threading.Thread(target=feed)
    t.start()
    assert pump.run() == len(data)
    t.join()
    assert pump.hash.digest() == hashlib.sha256(data).digest()
    os.close(out)
    got = (tmp_path / "o").read_bytes()
    assert got[:100] == b"\0" * 100 and got[100:] == data


def test_pump_write_error_closes_the_pipe():
    """A full disk (here /dev/full) ends the pump with ENOSPC, and the
    writer (QEMU) sees EPIPE instead of blocking forever."""
    r, w = os.pipe()
    full = os.open("/dev/full", os.O_WRONLY)
    pump = ck.Pump(r, full, 0)
    errs = []

    def feed():
        try:
            with open(w, "wb") as f:
                for _ in range(64):
                    f.write(b"x" * 65536)
        except BrokenPipeError as e:
            errs.append(e)
    t = threading.Thread(target=feed)
    t.start()
    with pytest.raises(OSError) as e:
        pump.run()
    t.join(10)
    os.close(full)
    assert e.value.errno == errno.ENOSPC
    assert ck.describe_oserror(e.value) == "No space left on device"
    assert not t.is_alive() and errs


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
