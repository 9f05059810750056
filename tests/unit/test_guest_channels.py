"""What a guest (or a stranger) can make xend hold through a domain's
channels: the console log's rotation (consolelog.py), bounded control
lines (control.py) and the TCP console's token (console.py)."""

import asyncio
import os
import stat

import pytest

from pyxen.xend import console, consolelog
from pyxen.xend.control import MAX_LINE, ControlChannel, ControlError


# ------------------------------------------------------------ console log
@pytest.mark.parametrize("files", [1, 2, 3, 5])
def test_console_log_is_capped_and_rotated(tmp_path, files):
    path = tmp_path / "guest-a.log"
    cl = consolelog.ConsoleLog(path, max_bytes=10_000, files=files)
    # QEMU's side: O_APPEND writes to the file xend rotates under it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        for i in range(2000):
            chunk = f"line {i:06d} {'x' * 100}\n".encode()
            os.write(fd, chunk)
            cl.wrote(len(chunk) * 40)       # checks often, as a fast guest would cause
    finally:
        os.close(fd)
    logs = sorted(p.name for p in tmp_path.iterdir())
    assert logs == ["guest-a.log"] + [f"guest-a.log.{i}" for i in range(1, files)]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 10_000 + 40 * 120, p
    assert b"line 001999" in path.read_bytes()        # the newest output is in the current file
    if files > 1:
        assert stat.S_IMODE((tmp_path / "guest-a.log.1").stat().st_mode) == 0o640


def test_console_log_missing_file_is_fine(tmp_path):
    consolelog.ConsoleLog(tmp_path / "none", 4096, 3).wrote(1 << 20)


# -------------------------------------------------------- control channel
async def _guest(path, answer: bytes):
    async def serve(reader, writer):
        while await reader.readline():
            writer.write(answer)
            await writer.drain()
    return await asyncio.start_unix_server(serve, str(path))


@pytest.mark.parametrize("answer", [b"x" * 300_000, b"y" * (MAX_LINE + 1) + b"\n"])
def test_an_overlong_guest_line_is_one_error_and_the_channel_recovers(tmp_path, answer):
    async def main():
        path = tmp_path / "ctl.sock"
        srv = await _guest(path, answer)
        ch = ControlChannel("g", str(path))
        with pytest.raises(ControlError, match=f"longer than {MAX_LINE} bytes"):
            await ch.request("vcpu-set 1", timeout=5)
        srv.close()
        await srv.wait_closed()
        os.unlink(path)
        srv = await _guest(path, b"ok\n")            # the guest behaves again
        assert await ch.request("vcpu-set 1", timeout=5) == "ok"
        await ch.close()
        srv.close()
    asyncio.run(main())


def test_guest_words_are_shown_escaped(tmp_path):
    async def main():
        path = tmp_path / "ctl.sock"
        srv = await _guest(path, b"err \x1b[2J\x07boom\n")
        ch = ControlChannel("g", str(path))
        try:
            await ch.request("x", timeout=5)
        except ControlError as e:
            return str(e)
        finally:
            await ch.close()
            srv.close()
    msg = asyncio.run(main())
    assert "\x1b" not in msg and "\x07" not in msg and "boom" in msg


# ------------------------------------------------------------ TCP console
@pytest.mark.parametrize("sent, ok", [(b"T0KEN\r\n", True), (b"wrong\r\n", False), (b"T0KEN-and-more\n", False),
                                      (b"z" * 10_000 + b"\n", False), (b"", False)])
def test_tcp_console_wants_the_token_first(tmp_path, sent, ok):
    async def main():
        path = tmp_path / "con.sock"
        outputs = []

        async def qemu(reader, writer):
            writer.write(b"guest output\r\n")
            await writer.drain()
            outputs.append(await reader.read(100))
        srv = await asyncio.start_unix_server(qemu, str(path))
        relay = console.ConsoleRelay("d", str(path))
        await relay.start()
        await relay.export_tcp("127.0.0.1", 0, "T0KEN")
        port = relay._tcp.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        prompt = await r.readline()
        w.write(sent)
        if not sent:
            w.write_eof()
        await w.drain()
        got = await asyncio.wait_for(r.read(4096), 10)
        w.close()
        await relay.close()
        srv.close()
        return prompt, got
    prompt, got = asyncio.run(main())
    assert b"API token" in prompt
    assert (b"guest output" in got) is ok


def test_tcp_console_is_not_exported_without_a_token(tmp_path):
    relay = console.ConsoleRelay("d", str(tmp_path / "x"))
    with pytest.raises(ValueError, match="no API token"):
        asyncio.run(relay.export_tcp("127.0.0.1", 0, ""))
