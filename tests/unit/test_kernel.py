"""Unit tests for pyxen.hypervisor.qemu.kernel: vmlinux extraction from
bzImage-like files, PVH note detection and robustness against bad input."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess

import pytest

from pyxen.hypervisor.qemu import kernel


def make_elf(with_pvh_note: bool, is64: bool = True, pad: int = 4096) -> bytes:
    """A minimal little-endian ELF executable with one PT_NOTE segment
    holding a harmless note plus, optionally, the Xen PHYS32_ENTRY note."""

    def note(owner: bytes, ntype: int, desc: bytes) -> bytes:
        name = owner + b"\0"
        out = struct.pack("<III", len(name), len(desc), ntype)
        out += name + b"\0" * (-len(name) % 4)
        out += desc + b"\0" * (-len(desc) % 4)
        return out

    notes = note(b"GNU", 3, b"\x01" * 20)  # a build-id style note first
    if with_pvh_note:
        notes += note(b"Xen", 18, struct.pack("<I", 0x1000000))
    notes += note(b"Linux", 18, b"\0" * 4)  # same type, wrong owner

    if is64:
        ehsize, phentsize = 64, 56
    else:
        ehsize, phentsize = 52, 32
    note_off = ehsize + phentsize
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + b"\0" * 9
    if is64:
        hdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, ehsize, 0, 0,
                                  ehsize, phentsize, 1, 0, 0, 0)
        ph = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(notes), len(notes), 4)
    else:
        hdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0x100000, ehsize, 0, 0,
                                  ehsize, phentsize, 1, 0, 0, 0)
        ph = struct.pack("<IIIIIIII", 4, note_off, 0, 0, len(notes), len(notes), 4, 4)
    body = hdr + ph + notes
    # Some incompressible-ish filler so the payload is not trivially tiny.
    return body + bytes((i * 7919) % 251 for i in range(pad))


def lz4_legacy(data: bytes) -> bytes:
    if shutil.which("lz4") is None:
        pytest.skip("lz4 CLI not installed")
    return subprocess.run(["lz4", "-l", "-9", "-c"], input=data, capture_output=True,
                          check=True).stdout


def fake_bzimage(payload: bytes, size: int, with_header: bool) -> bytes:
    """Header bytes, the compressed payload followed by the little-endian
    uncompressed size (as the kernel build appends it), and trailing bytes."""
    compressed = payload + struct.pack("<I", size)
    if with_header:
        setup_sects = 3
        head = bytearray((setup_sects + 1) * 512)
        head[0x1F1] = setup_sects
        head[0x1FE:0x200] = b"\x55\xaa"
        head[0x202:0x206] = b"HdrS"
        struct.pack_into("<H", head, 0x206, 0x020F)
        head[0x211] = 0x01  # LOADED_HIGH
        pre = b"\x90" * 300  # decompressor stub stand-in before the payload
        struct.pack_into("<II", head, 0x248, len(pre), len(compressed))
        return bytes(head) + pre + compressed + b"\xcc" * 777
    return b"MZ" + b"\x00\x11\x22\x33" * 200 + compressed + b"\xee" * 333


@pytest.mark.parametrize("with_header", [False, True])
def test_extract_lz4_legacy(tmp_path, with_header):
    elf = make_elf(with_pvh_note=True)
    img = tmp_path / "bzImage"
    img.write_bytes(fake_bzimage(lz4_legacy(elf), len(elf), with_header))
    out = tmp_path / "vmlinux"
    assert kernel.extract_vmlinux(img, out) is True
    assert out.read_bytes() == elf
    assert kernel.has_pvh_note(out)
    assert kernel.is_bzimage(img) is with_header
    # Atomic write leaves no temp files behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bzImage", "vmlinux"]


def test_extract_gzip(tmp_path):
    elf = make_elf(with_pvh_note=False)
    img = tmp_path / "bzImage"
    img.write_bytes(fake_bzimage(gzip.compress(elf), len(elf), with_header=True))
    out = tmp_path / "vmlinux"
    assert kernel.extract_vmlinux(img, out)
    assert out.read_bytes() == elf
    assert not kernel.has_pvh_note(out)


def test_extract_zstd(tmp_path):
    if shutil.which("zstd") is None:
        pytest.skip("zstd CLI not installed")
    elf = make_elf(with_pvh_note=True)
    comp = subprocess.run(["zstd", "-c", "-q"], input=elf, capture_output=True,
                          check=True).stdout
    img = tmp_path / "bzImage"
    img.write_bytes(fake_bzimage(comp, len(elf), with_header=False))
    out = tmp_path / "vmlinux"
    assert kernel.extract_vmlinux(img, out)
    assert out.read_bytes() == elf


def test_compressed_non_elf_is_rejected(tmp_path):
    data = b"definitely not an ELF file " * 200
    img = tmp_path / "bzImage"
    img.write_bytes(fake_bzimage(lz4_legacy(data), len(data), with_header=True))
    out = tmp_path / "vmlinux"
    assert kernel.extract_vmlinux(img, out) is False
    assert not out.exists()


@pytest.mark.parametrize("content", [
    b"",
    b"\x02\x21\x4c\x18" + b"\xff" * 64,        # lz4 magic, garbage after it
    b"\x1f\x8b\x08" + os.urandom(512),           # gzip magic, garbage after it
    b"\x28\xb5\x2f\xfd" + b"\x00" * 100,         # zstd magic, garbage
    b"\xfd7zXZ\x00" + b"\x01" * 100,              # xz magic, garbage
    os.urandom(8192),
], ids=["empty", "lz4-garbage", "gzip-garbage", "zstd-garbage", "xz-garbage", "random"])
def test_corrupt_input_returns_false(tmp_path, content):
    img = tmp_path / "bzImage"
    img.write_bytes(content)
    out = tmp_path / "vmlinux"
    assert kernel.extract_vmlinux(img, out) is False
    assert not out.exists()
    assert kernel.has_pvh_note(img) is False


def test_truncated_payload_returns_false(tmp_path):
    elf = make_elf(with_pvh_note=True, pad=65536)
    comp = lz4_legacy(elf)
    img = tmp_path / "bzImage"
    img.write_bytes(fake_bzimage(comp[: len(comp) // 2], len(elf), with_header=True))
    assert kernel.extract_vmlinux(img, tmp_path / "vmlinux") is False


def test_missing_file(tmp_path):
    assert kernel.extract_vmlinux(tmp_path / "nope", tmp_path / "out") is False
    assert kernel.has_pvh_note(tmp_path / "nope") is False
    assert kernel.is_bzimage(tmp_path / "nope") is False


@pytest.mark.parametrize("is64", [True, False])
def test_has_pvh_note(tmp_path, is64):
    yes = tmp_path / "yes"
    no = tmp_path / "no"
    yes.write_bytes(make_elf(True, is64=is64))
    no.write_bytes(make_elf(False, is64=is64))
    assert kernel.has_pvh_note(yes) is True
    assert kernel.has_pvh_note(no) is False


def test_has_pvh_note_truncated_elf(tmp_path):
    elf = make_elf(True)
    for cut in (10, 64, 100, 130):
        p = tmp_path / f"cut{cut}"
        p.write_bytes(elf[:cut])
        assert kernel.has_pvh_note(p) is False


def test_has_pvh_note_bogus_note_sizes(tmp_path):
    elf = bytearray(make_elf(True))
    # Corrupt the first note's descsz to something huge: must not raise.
    struct.pack_into("<I", elf, 64 + 56 + 4, 0xFFFFFFF0)
    p = tmp_path / "bogus"
    p.write_bytes(bytes(elf))
    assert kernel.has_pvh_note(p) is False


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    kernel.atomic_write(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert (target.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


# --- decompression bombs (issue 15 item 9) ---------------------------------------

def _compressors():
    import bz2
    import lzma
    out = {"gzip": gzip.compress, "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ),
           "bzip2": bz2.compress}
    for tool, argv in (("zstd", ["zstd", "-c", "-q"]), ("lz4", ["lz4", "-l", "-c"])):
        if shutil.which(tool):
            out[tool] = lambda d, argv=argv: subprocess.run(argv, input=d, capture_output=True,
                                                            check=True).stdout
    return out


@pytest.mark.parametrize("fmt", sorted(_compressors()))
@pytest.mark.parametrize("with_header", [False, True])
def test_a_payload_larger_than_any_kernel_is_refused(tmp_path, monkeypatch, fmt, with_header):
    # The limit lowered so the bomb is small to build; the rule is the same.
    monkeypatch.setattr(kernel, "MAX_VMLINUX", 1 << 20)
    bomb = make_elf(with_pvh_note=True) + bytes(3 << 20)
    img = tmp_path / "bzImage"
    # The header claims a small kernel: only the bounded output tells.
    img.write_bytes(fake_bzimage(_compressors()[fmt](bomb), 4096, with_header))
    with pytest.raises(kernel.KernelError, match="decompresses to more than 1 MiB: not a plausible kernel"):
        kernel.extract_vmlinux(img, tmp_path / "vmlinux")
    assert not (tmp_path / "vmlinux").exists()


def test_a_header_announcing_a_huge_kernel_is_refused_before_decompressing(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel, "MAX_VMLINUX", 1 << 20)
    img = tmp_path / "bzImage"
    img.write_bytes(fake_bzimage(gzip.compress(make_elf(True)), 2 << 30, with_header=True))
    with pytest.raises(kernel.KernelError, match="not a plausible kernel"):
        kernel.extract_vmlinux(img, tmp_path / "vmlinux")


def test_a_kernel_just_under_the_limit_still_extracts(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel, "MAX_VMLINUX", 1 << 20)
    elf = make_elf(with_pvh_note=True) + bytes((1 << 20) - 8192)
    img = tmp_path / "bzImage"
    img.write_bytes(fake_bzimage(gzip.compress(elf), len(elf), with_header=True))
    assert kernel.extract_vmlinux(img, tmp_path / "vmlinux")


def test_special_and_huge_kernel_files_are_refused(tmp_path, monkeypatch):
    from pyxen.hypervisor.qemu import kcache
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)                              # reading it would block forever
    with pytest.raises(kernel.KernelError, match="not a regular file"):
        kcache.boot_kernel(str(fifo), tmp_path / "cache")
    monkeypatch.setattr(kernel, "MAX_KERNEL_FILE", 1 << 16)
    big = tmp_path / "big"
    big.write_bytes(fake_bzimage(b"\0" * (1 << 17), 1, with_header=True))
    with pytest.raises(kernel.KernelError, match=f"kernel {big}: it is larger than"):
        kcache.boot_kernel(str(big), tmp_path / "cache")
