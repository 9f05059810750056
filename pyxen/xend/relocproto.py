"""The relocation protocol: what two xends say to each other over one
connection (TCP port 8002, inside TLS unless configured otherwise) to move
a domain.  Framing and message parsing here are pure; ``Link`` does the
blocking I/O on a connected socket (xend runs it in worker threads).

Every frame is a 5-byte header — type (one ASCII letter) and payload
length (big-endian u32) — and the payload:

====  ===================  ===============================================
type  payload              meaning
====  ===================  ===============================================
C     SXP, UTF-8, <= 1 MiB a control message (below)
D     bytes, <= 1 MiB      a piece of QEMU's migration stream
E     empty                the stream is complete (the source QEMU said so)
A     empty                the source gave up on the stream
====  ===================  ===============================================

The conversation (S = source, T = target)::

    S: (receive (version 1) (config (vm ...)) (accel tcg) (machine pc-i440fx-7.2)
                (qemu 7.2.0) (live 1) (host NAME) (paused 0))
    T: (ok (domid 7))                         or (err (type T) (value MESSAGE))
    S: D D D ... E                            (or ... A)
    T: (ok loaded)                            or (err ...)
    S: (commit)                               or (abort (reason ...))
    T: (ok running)                           or (err ...)

Early (the request carries ``(early 1)``; a target that agrees answers
``(ok early)`` at once, before it starts its QEMU, and gives the domid
with ``(ok loaded (domid N))``): the source streams while the target's
QEMU starts, the target holds the first frames in memory (``Spool``) and
says ``(ok listening)`` as soon as its QEMU takes them.  The source sends
at most its gate (16 MiB) before that, then ``(hold)``, and waits for the
answer while its QEMU waits on a full socket -- still in its first pass,
so it cannot stop the guest while nothing on the target can run it.  This
hides the target's prepare (checks, QEMU start, QMP) behind the first
pass (issue 17).  An older target ignores the flag and answers when
ready; copy-storage and same-host migrations keep that classic order.

With ``--copy-storage`` the request carries ``(storage (disk ...) ...)``,
the (ok (domid N) (storage (nbd (port P) (user U) (key K)) ...)) answer
says what the target made of each disk and where its QEMU serves them
(NBD over TLS with that one-migration pre-shared key, nbdtls), the source's
QEMU mirrors them there, and the source sends ``(stream)`` before the first
D frame (storagemigrate, docs/migration.md).

While D frames flow only S writes; T reports a failure by one C frame
(err ...) and then reads and drops the rest until E or A, so S finds the
error without the two ever writing at once.  The config travels as SXP
and is parsed, never evaluated: a peer cannot make xend run code.
"""

from __future__ import annotations

import base64
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..config import sxp

VERSION = 1
HEADER = struct.Struct(">cI")
CTRL, DATA, END, ABORT = b"C", b"D", b"E", b"A"
MAX_CTRL = 1 << 20
MAX_DATA = 1 << 20
HOLD_TIMEOUT = 120.0        # early: how long a source at its gate waits for the target's QEMU
_MACHINE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_ACCELS = ("tcg", "kvm")
_MIGRATION_ID = re.compile(r"[0-9a-f]{8,64}")


class ProtocolError(Exception):
    """The peer broke the protocol (or the link broke); the message says how."""


class PeerError(Exception):
    """The peer answered (err ...): *kind* and its message."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# ------------------------------------------------------------- framing
def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def parse_header(head: bytes) -> tuple[bytes, int]:
    """(type, length) of a frame header, or ProtocolError."""
    if len(head) != HEADER.size:
        raise ProtocolError("truncated frame header")
    kind, n = HEADER.unpack(head)
    if kind == CTRL:
        if n > MAX_CTRL:
            raise ProtocolError(f"control message of {n} bytes (at most {MAX_CTRL})")
    elif kind == DATA:
        if n > MAX_DATA:
            raise ProtocolError(f"data frame of {n} bytes (at most {MAX_DATA})")
    elif kind in (END, ABORT):
        if n:
            raise ProtocolError(f"{kind.decode()} frame with a payload")
    else:
        raise ProtocolError(f"unknown frame type {kind!r}")
    return kind, n


def encode_msg(msg: list) -> bytes:
    return frame(CTRL, sxp.to_string(msg).encode())


def decode_msg(payload: bytes) -> list:
    """A control message: one SXP list whose head is a symbol."""
    try:
        value = sxp.from_string(payload.decode("utf-8"))
    except (UnicodeDecodeError, sxp.SxpError) as e:
        raise ProtocolError(f"unreadable control message: {e}") from None
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise ProtocolError("control message is not an (op ...) expression")
    return value


# ------------------------------------------------------------- messages
@dataclass
class Receive:
    """The source's request: a domain to receive, and what the stream needs."""
    config: list               # the (vm ...) SXP
    accel: str
    machine: str
    qemu: str
    live: bool
    host: str
    paused: bool = False        # paused by the user: it arrives paused
    firmware: dict = field(default_factory=dict)   # HVM: what the target must match (hvm.save_meta)
    nvram: bytes = b""          # HVM under UEFI: the current variable store
    storage: list | None = None  # --copy-storage: the (storage (disk ...) ...) to create (storagemigrate)
    # This migration's random id, also in the source's job record: a target
    # that finds it there is the source's own host (a same-host migration).
    migration_id: str = ""
    # The source may stream before the target's QEMU listens (the target
    # holds the first frames; relocation.Incoming): "(ok early)" says it will.
    early: bool = False

    def to_msg(self) -> list:
        msg = ["receive", ["version", VERSION], ["config", self.config], ["accel", self.accel],
               ["machine", self.machine], ["qemu", self.qemu], ["live", int(self.live)],
               ["host", self.host], ["paused", int(self.paused)]]
        if self.firmware:
            msg.append(["firmware", *[[k, v] for k, v in sorted(self.firmware.items())]])
        if self.nvram:
            msg.append(["nvram", base64.b64encode(self.nvram).decode()])
        if self.storage is not None:
            msg.append(self.storage)
        if self.migration_id:
            msg.append(["id", self.migration_id])
        if self.early:
            msg.append(["early", 1])
        return msg


def parse_receive(msg: list) -> Receive:
    if msg[0] != "receive":
        raise ProtocolError(f"expected (receive ...), got ({msg[0]} ...)")
    version = sxp.child_value(msg, "version")
    if str(version) != str(VERSION):
        raise ProtocolError(f"relocation protocol version {version!r} (this xend speaks {VERSION})")
    cfg = sxp.child_value(msg, "config")
    if not isinstance(cfg, list) or not cfg or cfg[0] != "vm":
        raise ProtocolError("(receive ...) has no (config (vm ...))")
    accel = str(sxp.child_value(msg, "accel", ""))
    if accel not in _ACCELS:
        raise ProtocolError(f"unknown accelerator {accel!r}")
    machine = str(sxp.child_value(msg, "machine", ""))
    if not _MACHINE.fullmatch(machine):
        raise ProtocolError(f"bad machine type {machine!r}")
    live = str(sxp.child_value(msg, "live", "0"))
    paused = str(sxp.child_value(msg, "paused", "0"))
    if live not in ("0", "1") or paused not in ("0", "1"):
        raise ProtocolError(f"bad live or paused flag {live!r} {paused!r}")
    firmware = {}
    fw = sxp.child(msg, "firmware")
    if fw is not None:
        for item in fw[1:]:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise ProtocolError("bad (firmware ...) entry")
            firmware[item[0]] = int(item[1]) if item[1].isdigit() else item[1]
    nvram = sxp.child_value(msg, "nvram", "")
    try:
        nvram = base64.b64decode(str(nvram), validate=True) if nvram else b""
    except ValueError:
        raise ProtocolError("bad (nvram ...): not base64") from None
    mid = str(sxp.child_value(msg, "id", ""))
    if mid and not _MIGRATION_ID.fullmatch(mid):
        raise ProtocolError(f"bad migration id {mid[:40]!r}")
    return Receive(config=cfg, accel=accel, machine=machine, firmware=firmware, nvram=nvram, migration_id=mid,
                   qemu=str(sxp.child_value(msg, "qemu", "?"))[:32], live=live == "1",
                   host=str(sxp.child_value(msg, "host", "?"))[:255], paused=paused == "1",
                   storage=sxp.child(msg, "storage"), early=str(sxp.child_value(msg, "early", "0")) == "1")


def ok(*values) -> list:
    return ["ok", *values]


def err(kind: str, message: str) -> list:
    return ["err", ["type", kind], ["value", message]]


def check_reply(msg: list, want: str | None = None) -> list:
    """The values of an (ok ...) reply (whose first value is *want* when
    given); PeerError for (err ...), ProtocolError for anything else."""
    if msg[0] == "err":
        raise PeerError(str(sxp.child_value(msg, "type", "error")),
                        str(sxp.child_value(msg, "value", "unknown error"))[:2000])
    if msg[0] != "ok":
        raise ProtocolError(f"expected (ok ...) or (err ...), got ({msg[0]} ...)")
    if want is not None and (len(msg) < 2 or (msg[1] if isinstance(msg[1], str) else
                                               (msg[1][0] if msg[1] else None)) != want):
        raise ProtocolError(f"expected (ok {want} ...), got {sxp.to_string(msg)[:200]}")
    return msg[1:]


# ------------------------------------------------------------- the link
class Link:
    """Blocking frame I/O on a connected (TLS or plain) socket.

    One thread at a time uses a Link: an SSL connection must not be read
    and written concurrently.  *timeout* bounds every wait for the peer.
    """

    def __init__(self, sock: socket.socket, timeout: float = 60.0):
        self.sock = sock
        self.timeout = timeout
        sock.settimeout(timeout)
        self.sent = 0            # stream bytes sent / received
        self._head = bytearray(HEADER.size)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- raw
    def _recv_exact(self, mv: memoryview) -> None:
        got = 0
        while got < len(mv):
            try:
                n = self.sock.recv_into(mv[got:])
            except socket.timeout:
                raise ProtocolError(f"the peer sent nothing for {self.timeout:.0f} s") from None
            except (OSError, ssl.SSLError) as e:
                raise ProtocolError(f"the connection broke: {e}") from None
            if not n:
                raise ProtocolError("the peer closed the connection")
            got += n

    def _send(self, data) -> None:
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ProtocolError(f"the peer took nothing for {self.timeout:.0f} s") from None
        except (OSError, ssl.SSLError) as e:
            raise ProtocolError(f"the connection broke: {e}") from None

    def read_frame(self, buf: memoryview | None = None) -> tuple[bytes, memoryview | bytes]:
        self._recv_exact(memoryview(self._head))
        kind, n = parse_header(bytes(self._head))
        if buf is None or kind != DATA:
            data = bytearray(n)
            self._recv_exact(memoryview(data))
            return kind, bytes(data)
        self._recv_exact(buf[:n])
        return kind, buf[:n]

    # -- messages
    def send(self, msg: list) -> None:
        self._send(encode_msg(msg))

    def recv(self, timeout: float | None = None) -> list:
        """The next control message (data frames are a protocol error here)."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            kind, payload = self.read_frame()
        finally:
            self.sock.settimeout(self.timeout)
        if kind != CTRL:
            raise ProtocolError(f"expected a control message, got a {kind.decode()} frame")
        return decode_msg(payload)

    def request(self, msg: list, want: str | None = None, timeout: float | None = None) -> list:
        self.send(msg)
        return check_reply(self.recv(timeout), want)

    def pending(self) -> bool:
        """Whether the peer has sent something not yet read."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            r, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True        # reading will report what went wrong
        return bool(r)

    # -- the stream, source side
    def pump_out(self, src: socket.socket, gate: int | None = None, on_listening=None) -> None:
        """Send everything QEMU writes into *src* as D frames, until QEMU
        closes it.  A control message from the target meanwhile is an
        error (raised as PeerError) -- or, in an early migration (*gate*
        set), its (ok listening): then ``on_listening(held)`` is called.
        Early, once *gate* bytes went before it came, this sends (hold) and
        waits for it (QEMU waits on its full socket meanwhile)."""
        buf = bytearray(HEADER.size + MAX_DATA)
        mv = memoryview(buf)
        src.settimeout(None)
        checked = time.monotonic()
        waiting = gate is not None          # for the target's (ok listening)
        while True:
            if waiting and self.sent >= gate:
                self.send(["hold"])
                self._listening(check_reply(self.recv(HOLD_TIMEOUT)))
                waiting = False
                if on_listening is not None:
                    on_listening(True)
            try:
                n = src.recv_into(mv[HEADER.size:])
            except OSError as e:
                raise ProtocolError(f"reading QEMU's stream failed: {e}") from None
            if not n:
                return
            HEADER.pack_into(buf, 0, DATA, n)
            self._send(mv[:HEADER.size + n])
            self.sent += n
            now = time.monotonic()
            if waiting or now - checked > 0.05:
                checked = now
                if self.pending():
                    said = check_reply(self.recv())
                    if not waiting:
                        raise ProtocolError("the target sent a message in the middle of the stream")
                    self._listening(said)
                    waiting = False
                    if on_listening is not None:
                        on_listening(False)

    @staticmethod
    def _listening(said: list) -> None:
        if said[:1] != ["listening"]:
            raise ProtocolError(f"expected (ok listening) from the target, got (ok {said[:1]} ...)")

    def end(self, kind: bytes = END) -> None:
        self._send(frame(kind))

    # -- the stream, target side
    def pump_in(self, dst: socket.socket) -> tuple[bytes, str | None]:
        """Write the D frames into *dst* (QEMU's end) until E or A.
        Returns (E or A, None) — or, when QEMU stopped taking the stream,
        tells the source (err ...) at once, drains to E/A and returns
        (E or A, why)."""
        buf = bytearray(MAX_DATA)
        mv = memoryview(buf)
        problem = None
        told = False
        while True:
            kind, data = self.read_frame(mv)
            if kind in (END, ABORT):
                return kind, problem
            if kind == CTRL:
                said = decode_msg(bytes(data))
                if not (isinstance(dst, Spool) and said[:1] == ["hold"]):
                    raise ProtocolError("unexpected control message in the middle of the stream")
                # Early: the source waits for this QEMU to take the stream.
                if not told and problem is None:
                    try:
                        dst.wait_attached()
                    except Refused as e:
                        problem = e.message
                        self.send(err(e.kind, problem))
                        continue
                    self.send(ok("listening"))
                    told = True
                continue
            self.sent += len(data)
            if problem is None:
                try:
                    dst.sendall(data)
                except Refused as e:
                    # The target gave up while the frames were held (early).
                    problem = e.message
                    self.send(err(e.kind, problem))
                except OSError as e:
                    problem = f"the target QEMU stopped reading the stream ({e.strerror or e})"
                    self.send(err("stream", problem))
            if problem is None and isinstance(dst, Spool) and dst.ready and not told:
                # Early: the source holds the switch-over until it hears
                # the target QEMU takes the stream (this thread is the
                # only one using the link meanwhile).
                self.send(ok("listening"))
                told = True


class Refused(OSError):
    """The target gave up an early migration while it held the stream's
    first frames: *kind* and *message* for the source's (err ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


class Spool:
    """The target's side of an early migration: the stream's first frames,
    which arrive while its QEMU is still starting.  Up to *cap* bytes are
    held in memory (then the reading thread waits and TCP holds the source
    back); once QEMU's socket is attached they go to it in order, and
    every later frame goes straight there.  ``refuse`` makes the next
    write fail with the target's reason."""

    def __init__(self, cap: int):
        self.cap = cap
        self.held: deque[bytes] = deque()
        self.size = 0
        self.dst: socket.socket | None = None
        self.ready = False          # QEMU's socket is being attached: the source may go on
        self.refused: Refused | None = None
        self.cond = threading.Condition()

    def sendall(self, data) -> None:
        with self.cond:
            # Held only until QEMU's socket comes: from then on a frame waits
            # for the held ones to drain, so the backlog never grows behind
            # a QEMU that is reading (TCP holds the source back, the switch-
            # over cannot come with the stream's tail still held here).
            while self.dst is None and self.refused is None and (self.ready or self.size >= self.cap):
                self.cond.wait()
            if self.refused is not None:
                raise self.refused
            if self.dst is None:
                self.held.append(bytes(data))
                self.size += len(data)
                return
            dst = self.dst
        dst.sendall(data)

    def wait_attached(self) -> None:
        """Until QEMU's socket is being attached (or raise the refusal)."""
        with self.cond:
            while not self.ready and self.refused is None:
                self.cond.wait()
            if self.refused is not None:
                raise self.refused

    def attach(self, dst: socket.socket) -> None:
        """Hand the held frames to QEMU's socket *dst* (blocking), then let
        the reader write there itself.  The source may go on at once (the
        new frames queue behind the held ones): its sending overlaps this."""
        with self.cond:
            self.ready = True
            self.cond.notify_all()
        while True:
            with self.cond:
                if self.refused is not None:
                    return
                if not self.held:
                    self.dst = dst
                    self.cond.notify_all()
                    return
                chunk = self.held.popleft()
                self.size -= len(chunk)
                self.cond.notify_all()
            dst.sendall(chunk)

    def refuse(self, kind: str, message: str) -> None:
        with self.cond:
            self.refused = Refused(kind, message)
            self.held.clear()
            self.size = 0
            self.cond.notify_all()
