"""xm's side of the API: JSON over HTTP on xend's Unix socket.

Requests use the standard library's http.client (no event loop, so plain
commands start fast); the console uses aiohttp's websocket client.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket

from ..paths import Paths


class XmError(Exception):
    """A failure to report as ``Error: <msg>``; exit status ``code``."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("xend", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class Client:
    def __init__(self, paths: Paths | None = None, timeout: float = 600.0):
        self.paths = paths or Paths.from_env()
        self.sock = str(self.paths.socket)
        self.timeout = timeout

    def _connect_error(self, e: OSError) -> XmError:
        if isinstance(e, PermissionError) or (os.geteuid() != 0 and e.errno in (errno.EACCES, errno.EPERM)):
            return XmError("Most commands need root access. Please try again as root.")
        return XmError(f"Unable to connect to xend: {e.strerror or e}. Is xend running?")

    def request(self, method: str, path: str, body: dict | None = None):
        conn = _UnixConnection(self.sock, self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            try:
                conn.request(method, path, body=data, headers=headers)
            except OSError as e:
                raise self._connect_error(e) from None
            try:
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise XmError(f"xend closed the connection: {e}") from None
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            raise XmError(f"xend sent an unreadable answer (HTTP {resp.status})") from None
        if resp.status >= 400:
            msg = doc.get("error", f"HTTP {resp.status}") if isinstance(doc, dict) else str(doc)
            code = 3 if isinstance(doc, dict) and doc.get("code") == "no_such_domain" else 1
            raise XmError(msg, code)
        return doc

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body: dict | None = None):
        return self.request("POST", path, body or {})

    def delete(self, path: str):
        return self.request("DELETE", path)
