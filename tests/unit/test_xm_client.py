"""xm's HTTP client (pyxen.xm.unixhttp, pyxen.xm.client) against a stub
xend on a private Unix socket, and the structural check that a plain xm
command's start-up stays light (no http.client/email/aiohttp/asyncio)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pyxen.paths import Paths
from pyxen.xm.client import Client, XmError

REPO = Path(__file__).resolve().parents[2]


class StubXend:
    """Accepts connections on *path*; for each, reads one request and sends
    the next canned answer (raw bytes).  Records what it received."""

    def __init__(self, path: Path, answers: list[bytes]):
        self.path, self.answers, self.requests = path, list(answers), []
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.answers:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    got = conn.recv(65536)
                    if not got:
                        break
                    data += got
                head, _, body = data.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":", 1)[1])
                        while len(body) < n:
                            body += conn.recv(65536)
                self.requests.append((head.decode(), body))
                conn.sendall(self.answers.pop(0))

    def close(self):
        self.srv.close()
        self.thread.join(5)


def _json_answer(doc, status="200 OK") -> bytes:
    body = json.dumps(doc).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.fixture
def stub(tmp_path, monkeypatch):
    made = []

    def make(*answers: bytes) -> Client:
        sock = tmp_path / "xend.sock"
        made.append(StubXend(sock, list(answers)))
        monkeypatch.setenv("XM_SERVER", str(sock))
        client = Client(Paths(tmp_path))
        client.stub = made[-1]   # for tests that look at what was sent
        return client
    yield make
    for s in made:
        s.close()


def test_get_reads_a_content_length_body(stub):
    c = stub(_json_answer({"domid": 0, "name": "Domain-0"}))
    assert c.get("/api/domains/Domain-0") == {"domid": 0, "name": "Domain-0"}


def test_post_sends_json_with_its_length(stub):
    c = stub(_json_answer({"ok": True}))
    c.post("/api/domains/x/pause", {"a": [1, 2]})
    c.stub.thread.join(5)
    head, body = c.stub.requests[-1]
    assert head.startswith("POST /api/domains/x/pause HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}" in head and len(body) == 13 and "Connection: close" in head
    assert json.loads(body) == {"a": [1, 2]}


def test_chunked_and_close_delimited_bodies(stub):
    body = json.dumps({"domains": [{"name": "a"}]}).encode()
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % 5 + body[:5] + b"\r\n"
               + b"%x;ext=1\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n")
    closed = b"HTTP/1.0 200 OK\r\n\r\n" + body
    c = stub(chunked, closed)
    assert c.get("/api/domains") == {"domains": [{"name": "a"}]}
    assert c.get("/api/domains") == {"domains": [{"name": "a"}]}


def test_no_such_domain_exits_3_with_xends_message(stub):
    c = stub(_json_answer({"error": "Domain 'x' does not exist.", "code": "no_such_domain"},
                          "404 Not Found"))
    with pytest.raises(XmError) as e:
        c.get("/api/domains/x")
    assert e.value.code == 3 and str(e.value) == "Domain 'x' does not exist."


@pytest.mark.parametrize("answer, words", [
    (b"", "closed the connection"),
    (b"SSH-2.0-nope\r\n\r\n", "closed the connection"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"a\"", "closed the connection"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot", "unreadable answer"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "closed the connection"),
])
def test_broken_answers_are_one_line_errors(stub, answer, words):
    c = stub(answer)
    with pytest.raises(XmError) as e:
        c.get("/api/domains")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_no_xend_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XM_SERVER", str(tmp_path / "absent.sock"))
    with pytest.raises(XmError) as e:
        Client(Paths(tmp_path)).get("/api/domains")
    assert "Unable to connect to xend" in str(e.value) and "Is xend running?" in str(e.value)


def test_event_stream_over_chunks(stub):
    events = (b"event: created\ndata: {\"name\": \"a\"}\n\n: keep-alive\n\n"
              b"event: destroyed\ndata: {\"name\":\ndata: \"a\"}\n\n")
    # Split the stream mid-line across chunks, as a server flushing events may.
    parts = [events[:17], events[17:40], events[40:]]
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    for p in parts:
        answer += b"%x\r\n" % len(p) + p + b"\r\n"
    answer += b"0\r\n\r\n"
    c = stub(answer)
    opened = []
    got = list(c.stream("/api/events", on_open=lambda: opened.append(1)))
    assert opened == [1]
    assert got == [("created", {"name": "a"}), ("destroyed", {"name": "a"})]


def test_request_target_with_line_breaks_is_refused():
    from pyxen.xm import unixhttp
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError):
            unixhttp.send_request(a, "GET", "/x\r\nEvil: 1")
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------ structural
HOT_PATH_FORBIDDEN = ("http.client", "email", "aiohttp", "asyncio", "ssl")

PROBE = """
import sys
sys.argv = ["xm"] + sys.argv[1:]
from pyxen.xm.main import main
rc = main()
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in {forbidden!r} or m in {forbidden!r})
print("RC", rc, file=sys.stderr)
print("HEAVY", " ".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("argv, answer, out", [
    (["domid", "Domain-0"], {"domid": 0, "name": "Domain-0"}, "0\n"),
    (["list"], {"domains": [{"name": "Domain-0", "domid": 0, "memory": 1024, "vcpus": 2,
                             "state": "r-----", "cpu_time": 1.5}]}, "Domain-0"),
])
def test_plain_commands_do_not_import_heavy_modules(tmp_path, argv, answer, out):
    """A structural check, not a timing: `xm domid`/`xm list` must not pull in
    http.client (and with it email.*), ssl, aiohttp or asyncio."""
    sock = tmp_path / "xend.sock"
    srv = StubXend(sock, [_json_answer(answer)])
    try:
        env = dict(os.environ, XM_SERVER=str(sock), PYXEN_ROOT=str(tmp_path),
                   PYTHONPATH=str(REPO))
        res = subprocess.run([sys.executable, "-c", PROBE.format(forbidden=HOT_PATH_FORBIDDEN)] + argv,
                             env=env, capture_output=True, text=True, timeout=60)
    finally:
        srv.close()
    assert "RC 0" in res.stderr, res.stderr
    assert out in res.stdout
    heavy = next(line for line in res.stderr.splitlines() if line.startswith("HEAVY"))[5:].split()
    assert heavy == [], f"xm {' '.join(argv)} imported: {' '.join(heavy)}"


class _Trickle:
    """A socket stand-in whose recv hands out *piece* bytes at a time."""

    def __init__(self, data: bytes, piece: int):
        self.data, self.piece, self.closed = data, piece, False

    def recv(self, n):
        out, self.data = self.data[:min(n, self.piece)], self.data[min(n, self.piece):]
        return out

    def close(self):
        self.closed = True


@pytest.mark.parametrize("piece", [1, 3, 65536])
def test_response_parsing_does_not_depend_on_how_bytes_arrive(piece):
    from pyxen.xm import unixhttp
    body = b'{"x": "' + b"y" * 300 + b'"}'
    raw = (b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    sock = _Trickle(raw, piece)
    r = unixhttp.Response(sock)
    assert r.status == 404 and r.headers["x-a"] == "1, 2"
    assert r.read() == body
    r.close()
    assert sock.closed
    lines = unixhttp.Response(_Trickle(b"HTTP/1.1 200 OK\r\n\r\na\r\nbb\nlast", piece))
    assert list(lines.lines()) == [b"a", b"bb", b"last"]


def test_overlong_header_line_is_refused():
    from pyxen.xm import unixhttp
    with pytest.raises(unixhttp.ProtocolError):
        unixhttp.Response(_Trickle(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 4096))


@pytest.mark.parametrize("argv", [["Domain-0"], ["a", "-"], ["-l"], ["--long", "x"], ["x", "-l"], []])
def test_parse_opts_without_option_words_matches_getopt(argv):
    import getopt
    from pyxen.xm.commands import COMMANDS
    from pyxen.xm.main import parse_opts
    cmd = COMMANDS["list"]
    opts, rest = parse_opts(cmd, argv)
    shorts = "".join(o.short + (":" if o.arg else "") for o in cmd.opts if o.short)
    longs = [o.long + ("=" if o.arg else "") for o in cmd.opts]
    pairs, want_rest = getopt.gnu_getopt(argv, shorts, longs)
    assert rest == want_rest and len(opts) == len(pairs)
