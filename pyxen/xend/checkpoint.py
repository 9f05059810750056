"""Save files (``xm save`` / ``xm restore``): their format and their I/O.

A save file holds everything needed to bring a domain back: its config and
QEMU's migration stream of the stopped guest (RAM and device state).  It
starts the way Xen's did, so tools that recognise Xen save files (the
xendomains script checks ``head -c 16``) and tools that read the domain's
config from one keep working; pyxen's own record follows.  All integers
are big-endian.

=========  =======  ====================================================
offset     size     field
=========  =======  ====================================================
0          16       ``LinuxGuestRecord`` (Xen's signature, ASCII)
16         4        N, signed: length of the config (as in Xen)
20         N        the domain config, SXP ``(vm ...)`` on one line, UTF-8
A = 20+N   16       ``pyxen-qemu-state``: pyxen's record follows
A+16       4        format version (this module writes and reads 1)
A+20       4        M: length of the metadata
A+24       M        metadata, a JSON object (UTF-8): QEMU version, the
                    concrete machine type, accelerator, when and where
                    saved, whether the guest was paused.  Informational
                    except ``machine`` (restore asks QEMU for the same one)
                    and ``accel`` (a guest saved under KVM does not restore
                    under TCG and the reverse)
B = A+24+M 16       checksum algorithm, ASCII, NUL-padded: ``xxh3-128``
                    (written) or ``sha256``
B+16       8        L: length of the QEMU stream
B+24       64       digest of the QEMU stream, zero-padded
B+88       64       digest of bytes [0, B+88): the header itself
S = B+152  L        QEMU's migration stream; the file ends at S+L
=========  =======  ====================================================

Why each part is there:

* A foreign file fails the first 16 bytes.  A Xen save file passes them but
  has no ``pyxen-qemu-state`` record after its config.
* A file truncated anywhere is shorter than S+L, and stat() tells us so
  before anything is started.  A file with bytes appended is refused too.
* A damaged header (say, a flipped bit in the config) fails the header
  digest, also before anything is started.
* A damaged stream fails the stream digest.  Restore checks that digest
  while QEMU loads the stream and resumes the guest only if it matches, so
  a corrupt stream never runs.  A second read pass before QEMU starts
  would cost as much time as the load itself; the concurrent pass even
  speeds the load up, as read-ahead for QEMU's small reads (restores ran
  2-3 times faster than plain QEMU reading the cold file).

Writing: QEMU writes its stream into a temp file beside the target,
starting at offset S (the header's size is known before the stream
starts), while xend hashes it; then xend writes the header over the hole
at the start, fsyncs and renames the file into place.  A temp file that an
interrupted save leaves behind has no signature, so nothing mistakes it
for a save file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import struct
import threading
from dataclasses import dataclass

import xxhash

from .userpath import kind_of

XEN_MAGIC = b"LinuxGuestRecord"
RECORD_MAGIC = b"pyxen-qemu-state"
VERSION = 1
# The checksum guards against damage, not tampering: whoever can rewrite
# the file can recompute any unkeyed digest.  XXH3-128 hashes at several
# GB/s; SHA-256 (1.1-1.8 GB/s on the 2-core build host, under load) is
# slower than QEMU writes its stream and would add ~0.3 s per GiB saved.
ALGORITHM = "xxh3-128"
ALGORITHMS = {"xxh3-128": xxhash.xxh3_128, "sha256": hashlib.sha256}
MAX_CONFIG = 16 << 20         # bounds what a damaged length field makes us read
MAX_META = 1 << 20
DIGEST_FIELD = 64
CHUNK = 1 << 20
WRITEBACK_STEP = 32 << 20
TAIL = struct.Struct(">16sQ64s")
_MACHINE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")   # algorithm, L, stream digest (then the header digest)


class SaveFileError(Exception):
    """The file is not a save file this pyxen can restore; the message says why."""


@dataclass
class SaveInfo:
    """What the header of a valid save file says."""
    path: str
    config: str                  # the (vm ...) SXP
    meta: dict
    version: int
    algorithm: str
    stream_offset: int
    stream_length: int
    stream_digest: bytes
    file_size: int = 0


# ------------------------------------------------------------------ layout
def header_size(config_len: int, meta_len: int) -> int:
    return 20 + config_len + 24 + meta_len + TAIL.size + DIGEST_FIELD


def _pad(digest: bytes) -> bytes:
    return digest.ljust(DIGEST_FIELD, b"\0")


def encode_header(config: str, meta: dict, stream_length: int, stream_digest: bytes,
                  algorithm: str = ALGORITHM) -> bytes:
    """The complete header for a stream of *stream_length* bytes."""
    cfg = config.encode()
    mj = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    if len(cfg) > MAX_CONFIG or len(mj) > MAX_META:
        raise ValueError("config or metadata too large for a save file")
    head = (XEN_MAGIC + struct.pack(">i", len(cfg)) + cfg + RECORD_MAGIC
            + struct.pack(">II", VERSION, len(mj)) + mj
            + TAIL.pack(algorithm.encode(), stream_length, _pad(stream_digest)))
    return head + _pad(new_hash(algorithm, head).digest())


def new_hash(algorithm: str = ALGORITHM, data: bytes = b""):
    h = ALGORITHMS[algorithm]()
    if data:
        h.update(data)
    return h


# ------------------------------------------------------------------ reading
def _read_exact(f, n: int, path: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise SaveFileError(f"{path} is truncated: it ends inside the {what}")
    return data


def read_header(path: str) -> SaveInfo:
    """Read and check the header of *path*: signature, version, header digest
    and the exact file size.  The stream digest is left to the restore."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    # writer forever; the type is checked on the descriptor before any read.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise SaveFileError(f"Unable to read save file {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SaveFileError(f"{path} is not a regular file (it is {kind_of(st.st_mode)}): "
                            "a save file is what xm save wrote")
    os.set_blocking(fd, True)
    with open(fd, "rb") as f:
        return _parse(f, path, st.st_size)


def _parse(f, path: str, size: int) -> SaveInfo:
    sig = f.read(16)
    if sig and len(sig) < 16 and XEN_MAGIC.startswith(sig):
        raise SaveFileError(f"{path} is truncated: it ends inside the signature")
    if not sig:
        raise SaveFileError(f"{path} is empty: it is not a guest state file")
    if sig != XEN_MAGIC:
        # Say what was expected, never what was found: the file may be any
        # root-readable file (/etc/shadow through the API).
        raise SaveFileError(f"{path} is not a valid guest state file: it does not start with "
                            f"the {XEN_MAGIC.decode()!r} signature xm save writes")
    (n,) = struct.unpack(">i", _read_exact(f, 4, path, "config length"))
    if not 0 < n <= MAX_CONFIG:
        raise SaveFileError(f"{path} is corrupt: impossible config length {n}")
    cfg = _read_exact(f, n, path, "domain config")
    rec = f.read(16)
    if rec != RECORD_MAGIC:
        if len(rec) < 16 and RECORD_MAGIC.startswith(rec):
            raise SaveFileError(f"{path} is truncated: it ends inside the header")
        raise SaveFileError(f"{path} has no pyxen QEMU state after its config: it is a Xen save "
                            "file or damaged, and cannot be restored on QEMU")
    version, m = struct.unpack(">II", _read_exact(f, 8, path, "header"))
    if version != VERSION:
        raise SaveFileError(f"{path} uses save format version {version}; this pyxen reads "
                            f"version {VERSION}")
    if m > MAX_META:
        raise SaveFileError(f"{path} is corrupt: impossible metadata length {m}")
    mj = _read_exact(f, m, path, "header")
    tail = _read_exact(f, TAIL.size, path, "header")
    algo_raw, length, sdigest = TAIL.unpack(tail)
    algorithm = algo_raw.rstrip(b"\0").decode("ascii", "replace")
    if algorithm not in ALGORITHMS:
        raise SaveFileError(f"{path} is corrupt or from a newer pyxen: unknown checksum "
                            f"algorithm {algorithm!r}")
    hdigest = _read_exact(f, DIGEST_FIELD, path, "header")
    head = XEN_MAGIC + struct.pack(">i", n) + cfg + RECORD_MAGIC + struct.pack(">II", version, m) + mj + tail
    want = new_hash(algorithm, head).digest()
    if hdigest != _pad(want):
        raise SaveFileError(f"{path} is corrupt: the header checksum does not match")
    offset = len(head) + DIGEST_FIELD
    if size < offset + length:
        raise SaveFileError(f"{path} is truncated: {size - offset} of {length} bytes of "
                            "QEMU state are there")
    if size > offset + length:
        raise SaveFileError(f"{path} is corrupt: {size - offset - length} bytes follow the "
                            "end of the QEMU state")
    try:
        config = cfg.decode()
        meta = json.loads(mj)
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
        # It ends up on QEMU's command line: a machine type name, no options.
        if not _MACHINE.fullmatch(str(meta.get("machine", "pc"))):
            raise ValueError(f"bad machine type {meta.get('machine')!r}")
    except ValueError as e:
        raise SaveFileError(f"{path} is corrupt: unreadable header ({e})") from None
    except RecursionError:
        raise SaveFileError(f"{path} is corrupt: its metadata is nested too deeply") from None
    digest_len = new_hash(algorithm).digest_size
    return SaveInfo(path=path, config=config, meta=meta, version=version, algorithm=algorithm,
                    stream_offset=offset, stream_length=length,
                    stream_digest=sdigest[:digest_len], file_size=size)


# ------------------------------------------------------------------ I/O work
class Follower:
    """Hashes the stream part of a save file while QEMU is still writing it
    (in a worker thread).  QEMU writes straight into the file, which is
    several times faster than passing the stream through a pipe; this
    reads each byte back from the page cache right behind it.  Only bytes
    below the file's size are read, and the kernel raises the size only
    after the data is copied, so nothing half-written is hashed.
    ``finish(end)`` gives the final size once QEMU reports completion."""

    def __init__(self, path: str, offset: int, algorithm: str = ALGORITHM):
        self.path, self.offset, self.pos = path, offset, offset
        self.hash = new_hash(algorithm)
        self.end: int | None = None
        self._wake = threading.Event()
        self._cancelled = False

    def finish(self, end: int) -> None:
        self.end = end
        self._wake.set()

    def cancel(self) -> None:
        self._cancelled = True
        self._wake.set()

    def run(self) -> bytes | None:
        """The stream's digest, or None if cancelled."""
        buf = bytearray(CHUNK)
        mv = memoryview(buf)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        flushed = self.offset
        try:
            while not self._cancelled:
                end = self.end
                want = CHUNK if end is None else min(CHUNK, end - self.pos)
                if want <= 0:
                    return self.hash.digest()
                n = os.preadv(fd, [mv[:want]], self.pos)
                if n:
                    self.hash.update(mv[:n])
                    self.pos += n
                    if self.pos - flushed >= WRITEBACK_STEP:
                        # Start writing back what is hashed, so the final
                        # fsync waits for the last stretch only (DONTNEED
                        # begins writeback of dirty pages; clean ones are
                        # dropped, which keeps a big save out of the cache).
                        os.posix_fadvise(fd, flushed, self.pos - flushed, os.POSIX_FADV_DONTNEED)
                        flushed = self.pos
                    continue
                if end is not None:
                    raise OSError(errno.EIO, f"{self.path} is shorter than the stream QEMU wrote")
                # Caught up with QEMU: it writes again within microseconds
                # unless it is done or failing, which finish/cancel report.
                self._wake.wait(0.002)
                self._wake.clear()
            return None
        finally:
            os.close(fd)


class Verifier:
    """Hashes the stream part of a save file in a worker thread while QEMU
    loads it from its own descriptor; ``cancel()`` stops it early."""

    def __init__(self, info: SaveInfo):
        self.info = info
        self.done = 0
        self._stop = threading.Event()

    def cancel(self) -> None:
        self._stop.set()

    def run(self) -> bool:
        info = self.info
        h = new_hash(info.algorithm)
        buf = bytearray(CHUNK)
        mv = memoryview(buf)
        fd = os.open(info.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, info.stream_offset, info.stream_length, os.POSIX_FADV_SEQUENTIAL)
            f = open(fd, "rb", buffering=0, closefd=False)
            f.seek(info.stream_offset)
            left = info.stream_length
            while left and not self._stop.is_set():
                n = f.readinto(mv[:min(CHUNK, left)])
                if not n:
                    return False
                h.update(mv[:n])
                left -= n
                self.done += n
            return not left and h.digest() == info.stream_digest
        finally:
            os.close(fd)


def finish_file(fd: int, header: bytes) -> None:
    """Write the real header over the placeholder and flush it all to disk."""
    off = 0
    while off < len(header):
        off += os.pwrite(fd, header[off:], off)
    os.fsync(fd)


def fsync_dir(path: str) -> None:
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
