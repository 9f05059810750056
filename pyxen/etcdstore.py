"""The store on etcd: :class:`pyxen.store.Store` for a cluster of xends.

etcd 3.4 (Debian's ``etcd-server``) is reached through its JSON gateway
(``POST /v3/kv/range``, ``/v3/kv/txn``, ``/v3/lease/*``, ``/v3/watch``:
base64 keys and values, int64s as strings) with ``requests``, which does
TLS with a client certificate.  Why not an etcd client library is in
pyproject.toml: aetcd 1.0.0 opens an insecure gRPC channel unconditionally
(no ``--client-cert-auth``), and etcd3gw's watcher cannot resume a broken
stream nor its calls take a per-call deadline.

Why synchronous.  The store interface is synchronous (a FileStore call is
a few syscalls), and so is this backend: every call is one HTTP request
with one deadline (``timeout``, default 5 s; xend uses half the fence
margin) across all endpoints, so a dead etcd costs a caller that long,
never forever, and never long enough to delay the fence past the lease.  What must not wait on a caller — the
lease keep-alive, the watches — runs in threads of its own
(:mod:`pyxen.cluster.membership`, :class:`_WatchThread`), never on xend's
event loop.

Several endpoints: one client per endpoint; a call goes to the last one
that answered and moves on to the next when the connection fails or times
out, so one dead member of three costs one timeout, once.  A write that
timed out may still have been applied by etcd; every write xend makes that
matters is a transaction with compares, so a retry of one that did apply
fails its compare (StoreConflict) instead of applying twice.

The mapping to etcd: a key is the same bytes, a revision is etcd's
``mod_revision`` (an absent key compares as 0, as in etcd's own Compare),
:meth:`txn` is etcd's Txn whose failure branch reads the compared keys back
so StoreConflict can say what it found.  etcd refuses a Txn that writes a
key twice; the interface says later ops win, so only the last op on each
key is sent.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from urllib.parse import urlsplit

from .store import Compare, Delete, Entry, Put, Store, StoreConflict, StoreError, Watch, WatchEvent, check_key

log = logging.getLogger("pyxen.etcd")

API = "/v3/"


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s: str | None) -> bytes:
    return base64.b64decode(s) if s else b""


def _prefix_end(prefix: str) -> str:
    """etcd's range_end for "every key starting with *prefix*"."""
    if not prefix:
        return _b64(b"\0")
    b = bytearray(prefix.encode())
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return _b64(bytes(b[: i + 1]))
    return _b64(b"\0")


class EtcdUnreachable(StoreError):
    """No endpoint answered (all down, partitioned, or without quorum)."""


def parse_endpoints(text: str) -> list[str]:
    """``'https://A:2379 https://B:2379'`` → the URLs; raises ValueError
    naming the first one that is not ``http(s)://HOST:PORT``."""
    out = []
    for ep in text.replace(",", " ").split():
        u = urlsplit(ep)
        if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/"):
            raise ValueError(f"{ep!r} is not an etcd endpoint (https://HOST:PORT)")
        try:
            u.port
        except ValueError:
            raise ValueError(f"{ep!r}: bad port") from None
        out.append(f"{u.scheme}://{u.netloc}")
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


class EtcdStore(Store):
    """The store on the etcd cluster at *endpoints*, for host *host*.

    *ca*, *cert* and *key* are PEM files (the pool CA and this host's
    certificate): the server must present a certificate signed by *ca*, and
    xend presents *cert* (etcd's ``--client-cert-auth``)."""

    clustered = True

    def __init__(self, endpoints: list[str], host: str, ca: str | None = None, cert: str | None = None,
                 key: str | None = None, timeout: float = 5.0):
        self.host = host
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._tls = (ca, cert, key)
        self._sessions = [self.session() for _ in self.endpoints]
        self._good = 0          # the endpoint that answered last
        # When no member answered: since when, and when a call last really
        # tried (see call()).
        self._down_at: float | None = None
        self._tried_at = 0.0
        self._mu = threading.Lock()
        self._watches: list[_WatchThread] = []

    def session(self):
        """A fresh requests session with this store's TLS settings (watch
        streams each use their own, so closing one stops only that one)."""
        import requests
        s = requests.Session()
        # Not the environment's: REQUESTS_CA_BUNDLE would replace the pool
        # CA (requests lets it override Session.verify) and an HTTPS_PROXY
        # would route etcd's traffic through a stranger.
        s.trust_env = False
        ca, cert, key = self._tls
        if ca:
            s.verify = ca
        if cert and key:
            s.cert = (cert, key)
        return s

    # ------------------------------------------------------------ transport
    # While no member answers, a call fails at once unless this long has
    # passed since one really tried: xend's loop would otherwise wait a
    # whole timeout per store call (every persist of a fence's pause, the
    # xm list behind it) while etcd is cut off.
    RETRY_DOWN = 0.5

    def call(self, path: str, body: dict, timeout: float | None = None, probe: bool = False) -> dict:
        """POST *body* to ``/v3/<path>`` on the first endpoint that answers.
        With *probe* (the lease keep-alive) it always tries the network."""
        down = self._down_at
        now = time.monotonic()
        if down is not None and not probe and now - self._tried_at < self.RETRY_DOWN:
            raise EtcdUnreachable(f"etcd unreachable: no member has answered for {now - down:.1f} s")
        self._tried_at = now
        try:
            doc = self._call(path, body, timeout)
        except EtcdUnreachable:
            if self._down_at is None:
                self._down_at = now
            raise
        self._down_at = None
        return doc

    def _call(self, path: str, body: dict, timeout: float | None) -> dict:
        import requests
        n = len(self.endpoints)
        errors = []
        start = self._good
        # One deadline for the whole call, whatever the number of endpoints:
        # xend's loop (and so its fencer) never waits longer than this.
        deadline = time.monotonic() + (timeout or self.timeout)
        for i in range(n):
            idx = (start + i) % n
            left = deadline - time.monotonic()
            if left <= 0.05:
                errors.append(f"{self.endpoints[idx]}: not tried (out of time)")
                continue
            url = self.endpoints[idx] + API + path
            try:
                r = self._sessions[idx].post(url, data=json.dumps(body), timeout=left)
            except requests.exceptions.SSLError as e:
                errors.append(f"{self.endpoints[idx]}: TLS: {_short(e)}")
                continue
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
                errors.append(f"{self.endpoints[idx]}: {_short(e)}")
                continue
            try:
                doc = r.json()
            except ValueError:
                doc = {}
            if r.status_code == 200:
                self._good = idx
                return doc
            msg = doc.get("error") or doc.get("message") or r.text.strip()[:200]
            # No leader / timed out inside etcd: another member may do better.
            if r.status_code in (500, 503, 504) and any(
                    w in msg for w in ("no leader", "timed out", "unavailable", "not capable", "stopped")):
                errors.append(f"{self.endpoints[idx]}: {msg}")
                continue
            raise StoreError(f"etcd {self.endpoints[idx]} refused {path}: {msg}")
        raise EtcdUnreachable("etcd unreachable: " + "; ".join(errors))

    def close(self) -> None:
        for w in list(self._watches):
            w.cancel()
        for s in self._sessions:
            s.close()

    def ping(self) -> int:
        """One linearizable read: proves a quorum answers; returns the revision."""
        return self.head_revision()

    # ---------------------------------------------------------------- reads
    def _range(self, key: str, prefix: bool = False, keys_only: bool = False) -> dict:
        body = {"key": _b64(key or b"\0")}
        if prefix:
            body["range_end"] = _prefix_end(key)
        if keys_only:
            body["keys_only"] = True
        return self.call("kv/range", body)

    def read(self, key: str) -> Entry | None:
        check_key(key)
        kvs = self._range(key).get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return Entry(_unb64(kv.get("value")), int(kv.get("mod_revision", 0)))

    def read_with_lease(self, key: str) -> tuple[Entry, int] | None:
        """(entry, lease id) of *key*, None if absent."""
        kvs = self._range(key).get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return Entry(_unb64(kv.get("value")), int(kv.get("mod_revision", 0))), int(kv.get("lease", 0))

    def keys(self, prefix: str = "") -> list[str]:
        kvs = self._range(prefix, prefix=True, keys_only=True).get("kvs") or []
        return sorted(_unb64(kv["key"]).decode() for kv in kvs)

    def read_prefix(self, prefix: str) -> dict[str, Entry]:
        kvs = self._range(prefix, prefix=True).get("kvs") or []
        return {_unb64(kv["key"]).decode(): Entry(_unb64(kv.get("value")), int(kv.get("mod_revision", 0)))
                for kv in kvs}

    def head_revision(self) -> int:
        doc = self.call("kv/range", {"key": _b64("cluster/"), "limit": 1, "keys_only": True})
        return int(doc.get("header", {}).get("revision", 0))

    # --------------------------------------------------------------- writes
    def txn(self, compares: list[Compare], ops: list[Put | Delete]) -> int:
        for c in compares:
            check_key(c.key)
        last: dict[str, Put | Delete] = {}
        for op in ops:
            check_key(op.key)
            if isinstance(op, Put) and not isinstance(op.value, bytes):
                raise TypeError(f"store values are bytes, not {type(op.value).__name__}")
            last.pop(op.key, None)
            last[op.key] = op       # later ops win (etcd refuses a key written twice)
        success = []
        for op in last.values():
            if isinstance(op, Put):
                req = {"key": _b64(op.key), "value": _b64(op.value)}
                if op.lease:
                    req["lease"] = str(op.lease)
                success.append({"request_put": req})
            else:
                success.append({"request_delete_range": {"key": _b64(op.key)}})
        body = {
            "compare": [{"key": _b64(c.key), "result": "EQUAL", "target": "MOD",
                         "mod_revision": str(c.revision)} for c in compares],
            "success": success,
            "failure": [{"request_range": {"key": _b64(c.key)}} for c in compares],
        }
        doc = self.call("kv/txn", body)
        if not doc.get("succeeded", False) and compares:
            for c, resp in zip(compares, doc.get("responses") or []):
                kvs = (resp.get("response_range") or {}).get("kvs") or []
                actual = int(kvs[0].get("mod_revision", 0)) if kvs else 0
                if actual != c.revision:
                    raise StoreConflict(c.key, c.revision, actual)
            raise StoreConflict(compares[0].key, compares[0].revision, -1)
        return int(doc.get("header", {}).get("revision", 0))

    def quarantine(self, key: str, reason: str) -> None:
        """Move a corrupt value under ``quarantine/`` (with the reason) so
        it is kept for a person, and the key reads as absent."""
        e = self.read(key)
        if e is None:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = f"quarantine/{self.host}/{stamp}-{key.replace('/', '_')}"
        log.error("state %s is corrupt (%s); moved to %s", key, reason, aside)
        try:
            self.txn([Compare(key, e.revision)], [Put(aside, e.value), Put(aside + ".why", reason.encode()),
                                                  Delete(key)])
        except StoreConflict:
            pass    # rewritten meanwhile: the new value is not ours to judge

    def quarantined(self) -> list[str]:
        return [k for k in self.keys("quarantine/") if not k.endswith(".why")]

    # --------------------------------------------------------------- leases
    def grant_lease(self, ttl: int) -> int:
        doc = self.call("lease/grant", {"TTL": str(int(ttl))})
        if doc.get("error"):
            raise StoreError(f"etcd refused a lease: {doc['error']}")
        return int(doc["ID"])

    def keepalive(self, lease: int, timeout: float | None = None) -> int:
        doc = self.call("lease/keepalive", {"ID": str(lease)}, timeout=timeout, probe=True)
        res = doc.get("result") or {}
        return int(res.get("TTL", 0))

    def revoke_lease(self, lease: int) -> None:
        try:
            self.call("kv/lease/revoke", {"ID": str(lease)})
        except StoreError as e:
            if "not found" not in str(e):
                raise

    def lease_remaining(self, lease: int) -> tuple[int, int]:
        doc = self.call("kv/lease/timetolive", {"ID": str(lease)})
        ttl = int(doc.get("TTL", -1))
        if ttl < 0:
            return 0, 0
        return int(doc.get("grantedTTL", 0)), ttl

    # --------------------------------------------------------------- watches
    def watch(self, prefix: str, callback, start_revision: int = 0) -> Watch:
        if not start_revision:
            start_revision = self.head_revision() + 1
        w = _WatchThread(self, prefix, callback, start_revision)
        self._watches.append(w)
        w.start()
        return w


def _short(e: Exception) -> str:
    """A requests error in a few words (its repr nests pools and adapters)."""
    text = str(e)
    for marker in ("Connection refused", "timed out", "No route to host", "Network is unreachable",
                   "certificate verify failed", "Name or service not known"):
        if marker in text:
            return marker
    return text.split(":")[-1].strip()[:120] or type(e).__name__


class _WatchThread(Watch):
    """One prefix watch over the gateway's streaming ``/v3/watch``, resumed
    from the next revision on any error, on any endpoint that answers."""

    READ_TIMEOUT = 30.0     # an idle stream is re-made: a cut network sends no RST

    def __init__(self, store: EtcdStore, prefix: str, callback, start_revision: int):
        self.store, self.prefix, self.callback = store, prefix, callback
        self.next_rev = start_revision
        self._stop = threading.Event()
        self._resp = None
        self._thread = threading.Thread(target=self._run, name=f"etcd-watch {prefix}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._stop.set()
        r = self._resp
        if r is not None:
            # Closing a response does not wake a thread blocked reading it;
            # shutting its socket down does.
            try:
                r.raw.connection.sock.shutdown(socket.SHUT_RDWR)
            except Exception:     # noqa: BLE001 — best effort: the stream may be gone already
                pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        try:
            self.store._watches.remove(self)
        except ValueError:
            pass

    def _run(self) -> None:
        idx = self.store._good
        while not self._stop.is_set():
            ep = self.store.endpoints[idx % len(self.store.endpoints)]
            try:
                self._stream(ep)
            except Exception as e:    # noqa: BLE001 — any failure: resume elsewhere
                if self._stop.is_set():
                    return
                log.debug("watch %s on %s: %s; resuming at revision %d", self.prefix, ep, e, self.next_rev)
            idx += 1
            self._stop.wait(0.3)

    def _stream(self, ep: str) -> None:
        body = {"create_request": {"key": _b64(self.prefix or b"\0"), "range_end": _prefix_end(self.prefix),
                                   "start_revision": str(self.next_rev), "prev_kv": True}}
        s = self.store.session()
        try:
            r = s.post(ep + API + "watch", data=json.dumps(body), stream=True,
                       timeout=(self.store.timeout, self.READ_TIMEOUT))
            self._resp = r
            if self._stop.is_set():
                return
            r.raise_for_status()
            for line in r.iter_lines(chunk_size=None):
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                res = json.loads(line).get("result") or {}
                if res.get("compact_revision"):
                    log.warning("watch %s: revisions before %s compacted; some changes were missed",
                                self.prefix, res["compact_revision"])
                    self.next_rev = int(res["compact_revision"])
                    return
                if res.get("canceled"):
                    raise StoreError(res.get("cancel_reason") or "watch canceled by etcd")
                for ev in res.get("events") or []:
                    kv = ev.get("kv") or {}
                    rev = int(kv.get("mod_revision", 0))
                    kind = "delete" if ev.get("type") == "DELETE" else "put"
                    value = _unb64(kv.get("value"))
                    if kind == "delete":
                        value = _unb64((ev.get("prev_kv") or {}).get("value"))
                        lease = int((ev.get("prev_kv") or {}).get("lease", 0))
                    else:
                        lease = int(kv.get("lease", 0))
                    event = WatchEvent(kind, _unb64(kv.get("key")).decode(), value, rev, lease)
                    if self._stop.is_set():
                        return
                    try:
                        self.callback(event)
                    except Exception:   # noqa: BLE001 — a subscriber's bug must not stop the watch
                        log.exception("watch %s: callback failed on %s", self.prefix, event.key)
                    self.next_rev = max(self.next_rev, rev + 1)
        finally:
            self._resp = None
            s.close()
