"""A minimal HTTP/1.1 client over a Unix socket, for xm's requests to xend.

Why not ``http.client``: importing it pulls in ``email.*``, ``ssl`` and
friends, about 20 ms on every ``xm`` run, which is most of what a plain
command like ``xm domid`` costs over the bare interpreter.  xm needs only a
sliver of HTTP: one request per connection (``Connection: close``), a
status line, headers, and a body framed by ``Content-Length``, by chunked
transfer coding (xend's event stream) or by the end of the connection.
That sliver is this module; it imports nothing beyond ``socket``.
"""

from __future__ import annotations

import socket

MAX_LINE = 65536      # longest status/header/chunk-size line accepted
MAX_HEADERS = 100


class ProtocolError(Exception):
    """The peer's answer is not HTTP/1.x as this client understands it, or it
    closed the connection early."""


class Response:
    """An answer being read: ``status``, ``headers`` (names lower-cased),
    then the body through ``read()`` (all of it) or ``lines()`` (a stream)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._f = sock.makefile("rb")
        self.status, self.headers = self._head()
        te = self.headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in te
        length = self.headers.get("content-length")
        if self._chunked or length is None:
            self._length = None
        else:
            try:
                self._length = int(length)
            except ValueError:
                raise ProtocolError(f"bad Content-Length {length!r}") from None
            if self._length < 0:
                raise ProtocolError(f"bad Content-Length {length!r}")
        # 1xx, 204 and 304 never carry a body (RFC 9112 section 6.3).
        if self.status in (204, 304) or 100 <= self.status < 200:
            self._chunked, self._length = False, 0

    def _line(self) -> bytes:
        line = self._f.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ProtocolError("line too long")
        return line

    def _head(self) -> tuple[int, dict]:
        line = self._line()
        if not line:
            raise ProtocolError("connection closed before the status line")
        parts = line.decode("latin-1").rstrip("\r\n").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {line[:80]!r}")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self._line()
            if not line:
                raise ProtocolError("connection closed inside the headers")
            if line in (b"\r\n", b"\n"):
                return int(parts[1]), headers
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            # Repeated headers join with a comma (RFC 9110 section 5.3).
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        raise ProtocolError("too many headers")

    def _exact(self, n: int) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise ProtocolError("connection closed inside the body")
        return data

    def chunks(self):
        """Yield the body in pieces as they arrive (b"" pieces never)."""
        if self._chunked:
            while True:
                size_line = self._line()
                if not size_line:
                    raise ProtocolError("connection closed inside a chunked body")
                size_text = size_line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
                if size == 0:
                    while self._line() not in (b"\r\n", b"\n", b""):   # trailers, ignored
                        pass
                    return
                yield self._exact(size)
                if self._line() not in (b"\r\n", b"\n"):
                    raise ProtocolError("chunk not followed by CRLF")
        elif self._length is not None:
            if self._length:
                yield self._exact(self._length)
        else:
            while True:
                data = self._f.read1(65536)
                if not data:
                    return
                yield data

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def lines(self):
        """Yield the body line by line (each without its line end) as it
        arrives; a last line without a line end is yielded too."""
        buf = b""
        for piece in self.chunks():
            buf += piece
            *done, buf = buf.split(b"\n")
            for line in done:
                yield line.rstrip(b"\r")
        if buf:
            yield buf.rstrip(b"\r")

    def close(self) -> None:
        self._f.close()
        self._sock.close()


def connect(path: str, timeout: float | None) -> socket.socket:
    """A connected stream socket to *path*; OSError as the kernel said it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
    except BaseException:
        s.close()
        raise
    return s


def send_request(sock: socket.socket, method: str, target: str, body: bytes | None = None,
                 headers: dict | None = None) -> None:
    """Write one request; the connection is closed by the server after it."""
    if any(c in target for c in " \r\n") or any(c in method for c in " \r\n"):
        raise ValueError(f"bad request target {target!r}")
    lines = [f"{method} {target} HTTP/1.1", "Host: xend", "Connection: close"]
    for k, v in (headers or {}).items():
        if any(c in f"{k}{v}" for c in "\r\n"):
            raise ValueError(f"bad header {k!r}")
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    sock.sendall(head + body if body else head)
