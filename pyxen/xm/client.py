"""xm's side of the API: JSON over HTTP on xend's Unix socket.

Requests go through ``unixhttp``, a small HTTP/1.1 client, rather than the
standard library's ``http.client``: importing that one (it pulls in
``email.*`` and ``ssl``) cost more than everything else a plain ``xm``
command does.  No event loop either, so plain commands start fast; only
the console (``console.py``) uses aiohttp's websocket client.
"""

from __future__ import annotations

import errno
import json
import os

from . import unixhttp


class XmError(Exception):
    """A failure to report as ``Error: <msg>``; exit status ``code``."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


class Client:
    def __init__(self, paths=None, timeout: float = 600.0):
        if paths is None:
            # Imported here: the common case passes the Paths it already has.
            from ..paths import Paths
            paths = Paths.from_env()
        self.paths = paths
        self.sock = str(self.paths.socket)
        self.timeout = timeout

    def connect_error(self, e: OSError) -> XmError:
        """The one line to print when xend's socket cannot be reached."""
        if isinstance(e, PermissionError) or (os.geteuid() != 0 and e.errno in (errno.EACCES, errno.EPERM)):
            return XmError("Most commands need root access. Please try again as root.")
        return XmError(f"Unable to connect to xend: {e.strerror or e}. Is xend running?")

    def _open(self, method: str, path: str, body: bytes | None, headers: dict,
              timeout: float | None) -> unixhttp.Response:
        """Send one request and read the answer's head; the caller closes it."""
        try:
            sock = unixhttp.connect(self.sock, timeout)
        except OSError as e:
            raise self.connect_error(e) from None
        try:
            unixhttp.send_request(sock, method, path, body, headers)
            return unixhttp.Response(sock)
        except (OSError, unixhttp.ProtocolError) as e:
            sock.close()
            raise XmError(f"xend closed the connection: {e}") from None
        except BaseException:
            sock.close()
            raise

    def request(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        resp = self._open(method, path, data, headers, self.timeout)
        try:
            raw = resp.read()
        except (OSError, unixhttp.ProtocolError) as e:
            raise XmError(f"xend closed the connection: {e}") from None
        finally:
            resp.close()
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            raise XmError(f"xend sent an unreadable answer (HTTP {resp.status})") from None
        if resp.status >= 400:
            msg = doc.get("error", f"HTTP {resp.status}") if isinstance(doc, dict) else str(doc)
            code = 3 if isinstance(doc, dict) and doc.get("code") == "no_such_domain" else 1
            raise XmError(msg, code)
        return doc

    def stream(self, path: str, on_open=None):
        """Yield (event, data) pairs from a server-sent-events resource;
        *on_open()* is called once xend has accepted the subscription."""
        resp = self._open("GET", path, None, {"Accept": "text/event-stream"}, None)
        try:
            if resp.status >= 400:
                raise XmError(f"xend refused the event stream (HTTP {resp.status})")
            if on_open:
                on_open()
            event, data = None, []
            try:
                for raw in resp.lines():
                    line = raw.decode(errors="replace")
                    if line == "":
                        if event is not None:
                            yield event, json.loads("\n".join(data)) if data else None
                        event, data = None, []
                    elif line.startswith(":"):
                        continue
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
            except (OSError, unixhttp.ProtocolError) as e:
                raise XmError(f"xend closed the connection: {e}") from None
        finally:
            resp.close()

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body: dict | None = None):
        return self.request("POST", path, body or {})

    def delete(self, path: str):
        return self.request("DELETE", path)
