"""A minimal HTTP/1.1 client over a Unix socket, for xm's requests to xend.

Why not ``http.client``: importing it pulls in ``email.*``, ``ssl`` and
friends, about 20 ms on every ``xm`` run, which is most of what a plain
command like ``xm domid`` costs over the bare interpreter.  xm needs only a
sliver of HTTP: one request per connection (``Connection: close``), a
status line, headers, and a body framed by ``Content-Length``, by chunked
transfer coding (xend's event stream) or by the end of the connection.
That sliver is this module.  It uses ``_socket``, the C module under
``socket``: ``socket`` itself adds ``selectors``, ``array`` and its enum
conversions, another 2-4 ms per run, none of which a blocking client on one
Unix socket needs.  Reads are buffered here instead of by ``makefile``.
"""

from __future__ import annotations

import _socket

MAX_LINE = 65536      # longest status/header/chunk-size line accepted
MAX_HEADERS = 100


class ProtocolError(Exception):
    """The peer's answer is not HTTP/1.x as this client understands it, or it
    closed the connection early."""


class Response:
    """An answer being read: ``status``, ``headers`` (names lower-cased),
    then the body through ``read()`` (all of it) or ``lines()`` (a stream)."""

    def __init__(self, sock):
        self._sock = sock
        self._f = _Reader(sock)
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
        self._sock.close()


class _Reader:
    """Buffered reads from a socket: what ``makefile("rb")`` would give."""

    def __init__(self, sock):
        self._sock, self._buf = sock, bytearray()

    def _fill(self) -> bool:
        data = self._sock.recv(65536)
        self._buf += data
        return bool(data)

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def readline(self, limit: int) -> bytes:
        """Up to and including the next b"\n", at most *limit* bytes; what
        is left at the end of the stream; b"" at its end."""
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if 0 <= i < limit:
                return self._take(i + 1)
            if len(self._buf) >= limit:
                return self._take(limit)
            start = len(self._buf)
            if not self._fill():
                return self._take(len(self._buf))

    def read(self, n: int) -> bytes:
        """*n* bytes, or fewer only at the end of the stream."""
        while len(self._buf) < n and self._fill():
            pass
        return self._take(n)

    def read1(self, n: int) -> bytes:
        """What is buffered or one receive's worth, at most *n*; b"" at the end."""
        if not self._buf:
            self._fill()
        return self._take(n)


def connect(path: str, timeout: float | None):
    """A connected stream socket to *path*; OSError as the kernel said it."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
    except BaseException:
        s.close()
        raise
    return s


def send_request(sock, method: str, target: str, body: bytes | None = None,
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
