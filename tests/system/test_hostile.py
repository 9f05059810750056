"""Issue 15 on a real xend: what a hostile local user or network peer tried.

User-named output paths (save, dump-core), domain names, a decompression
bomb for a kernel, and idle or half-sent connections to the relocation and
HTTP ports while ``xm create`` must still work.  The unit tests beside
these (test_userpath, test_names, test_preauth, test_kernel,
test_guest_channels) try many more inputs of each class."""

from __future__ import annotations

import os
import socket
import stat
import struct
import time
import zlib

from pyxen.testing.ports import free_port


def one_line_error(res, *needles):
    assert res.returncode != 0, (res.stdout, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr
    err = res.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, (n, err)


def nothing_left(h, running: set[str]):
    assert set(h.domains()) == {"Domain-0"} | running


def test_save_and_dump_core_never_replace_or_follow(host, tmp_path):
    h = host
    h.xm("create", str(h.config("victim")))
    d = tmp_path / "targets"
    d.mkdir()
    os.mknod(d / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))     # a private /dev/null
    os.mkfifo(d / "fifo")
    (d / "root-file").write_text("precious\n")
    os.chmod(d / "root-file", 0o600)
    (d / "link").symlink_to(d / "root-file")
    (d / "dir").mkdir()
    for name in ("null", "fifo", "link", "dir"):
        before = os.lstat(d / name)
        for op in (("save", "-c", "victim"), ("dump-core", "victim")):
            res = h.xm(*op, str(d / name), check=False, timeout=120)
            one_line_error(res, str(d / name), "not a regular file")
            after = os.lstat(d / name)
            assert (after.st_ino, after.st_mode, after.st_rdev) == (before.st_ino, before.st_mode,
                                                                     before.st_rdev), (op, name)
    assert (d / "root-file").read_text() == "precious\n"
    assert "victim" in h.domains() and "p" not in h.domains()["victim"]["state"]
    # A pre-created world-writable file: replaced by a new 0600 file, the
    # old inode (and any other name for it) never receives guest memory.
    trap = d / "core"
    trap.write_text("")
    os.chmod(trap, 0o666)
    os.link(trap, d / "other-name")
    h.xm("dump-core", "victim", str(trap), timeout=300)
    assert stat.S_IMODE(trap.stat().st_mode) == 0o600 and trap.read_bytes()[:4] == b"\x7fELF"
    assert (d / "other-name").read_text() == ""
    assert not [p for p in d.iterdir() if p.name.startswith(".")]      # no temp files left
    h.xm("destroy", "victim")


def _bzimage_bomb(path, megabytes: int) -> None:
    """A bzImage whose gzip payload unpacks to *megabytes* of zeros behind an ELF magic."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(b"\x7fELF\x02\x01\x01" + bytes(57))]
    block = bytes(1 << 20)
    for _ in range(megabytes):
        parts.append(c.compress(block))
    parts.append(c.flush())
    payload = b"".join(parts) + struct.pack("<I", 4096)
    head = bytearray(4 * 512)
    head[0x1F1] = 3
    head[0x1FE:0x200] = b"\x55\xaa"
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x020F)
    head[0x211] = 0x01
    struct.pack_into("<II", head, 0x248, 0, len(payload))
    path.write_bytes(bytes(head) + payload)


def test_bad_names_and_kernel_bombs_are_one_line_and_leave_nothing(host, tmp_path):
    h = host
    for bad in ("a,process=evil", "two words", "new\nline", "esc\x1b[2J", "1234", "tab\there"):
        cfg = h.config("badname")
        cfg.write_text(cfg.read_text().replace("name = 'badname'", f"name = {bad!r}"))
        res = h.xm("create", str(cfg), check=False)
        one_line_error(res, "invalid domain name")
        assert "\x1b" not in res.stderr
        nothing_left(h, set())
    assert not h.qemu_pids()
    bomb = tmp_path / "bzImage"
    _bzimage_bomb(bomb, 200)                 # 200 MiB unpacked, ~200 KiB on disk
    assert bomb.stat().st_size < 1 << 20
    res = h.xm("create", str(h.config("bomb", kernel=str(bomb))), check=False)
    one_line_error(res, "not a plausible kernel")
    nothing_left(h, set())
    # Rename onto a bad name is refused by the same rule.
    h.xm("create", str(h.config("good")))
    res = h.xm("rename", "good", "bad,name", check=False)
    one_line_error(res, "invalid domain name")
    assert "good" in h.domains()
    h.xm("destroy", "good")


def test_idle_and_half_sent_connections_do_not_stall_xend(make_host):
    reloc, http = free_port(), free_port()
    h = make_host(f"""
        (accel tcg)
        (xend-relocation-server yes)
        (xend-relocation-tls no)
        (xend-relocation-address 127.0.0.1)
        (xend-relocation-port {reloc})
        (xend-http-server yes)
        (xend-address 127.0.0.1)
        (xend-port {http})
        (xend-preauth-timeout 3)
        """)
    t0 = time.monotonic()
    h.xm("create", str(h.config("unloaded")))
    unloaded = time.monotonic() - t0
    h.xm("destroy", "unloaded")

    # A 16 MiB login body is refused before it is read.
    s = socket.create_connection(("127.0.0.1", http), timeout=10)
    s.sendall(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 16777216\r\n\r\n{")
    s.settimeout(30)
    reply = s.recv(4096)
    s.close()
    held = []
    # Far more than the caps (64 in total, 8 per peer), on both ports:
    # idle TCP, and HTTP requests that never finish their headers.
    for _ in range(150):
        held.append(socket.create_connection(("127.0.0.1", reloc), timeout=10))
    for _ in range(150):
        s = socket.create_connection(("127.0.0.1", http), timeout=10)
        s.sendall(b"GET /api/domains HTTP/1.1\r\nHost: x\r\n")
        held.append(s)
    t0 = time.monotonic()
    h.xm("create", str(h.config("loaded")), timeout=300)
    loaded = time.monotonic() - t0
    assert "loaded" in h.domains()
    print(f"\nxm create: {unloaded:.2f} s unloaded, {loaded:.2f} s with 300 hostile connections open")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # xend closes every one of them by itself (over the caps at once, the
    # rest at the 3 s deadline): nothing is held for ever.
    deadline = time.monotonic() + 60
    for s in held:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
        s.close()
    assert time.monotonic() < deadline
    # The log says so briefly: rate-limited per peer, not 300 lines.
    def refusals():
        log = (h.root / "var/log/xen/xend.log").read_text()
        return [ln for ln in log.splitlines() if "refused" in ln and "127.0.0.1" in ln]
    assert 1 <= len(refusals()) <= 10, refusals()
    res = h.run("curl", "-s", "-m", "20", "-D", "-", f"http://127.0.0.1:{http}/ui/index.html")
    assert "X-Frame-Options: DENY" in res.stdout and "frame-ancestors 'none'" in res.stdout
    h.xm("destroy", "loaded")
