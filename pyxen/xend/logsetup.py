"""xend's logging: where it goes, who may read it, and what it never says.

* ``xend.log`` (or ``(logfile ...)``) rotates at 1 MiB, five kept, and is
  created and kept mode 0640 (root and the adm-style group only): it
  names domains, peers and paths, which are not every local user's business;
* every record passes through :class:`Redactor` before any handler writes
  it: a password, passphrase, token or secret -- as a ``key=value``, a JSON
  or Python ``"key": value`` pair, an SXP ``(vncpasswd X)`` or a
  ``Bearer X`` header -- is replaced by ``***``, at every level, whoever
  logged it (QMP ``set_password`` arguments at DEBUG were the leak);
* the in-memory ring ``xm dmesg`` prints.
"""

from __future__ import annotations

import collections
import logging
import logging.handlers
import os
import re

__all__ = ["Ring", "RING", "Redactor", "redact", "setup_logging", "LOG_MODE"]

LOG_MODE = 0o640

_KEYS = r"(?:vnc)?passw(?:or)?d|passphrase|secret|token|api[_-]?key"
_PATTERNS = [
    # "password": "x"  'password': 'x'  password=x  password = 'x'  password: x
    (re.compile(rf"""(?i)(["']?\b(?:{_KEYS})\b["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,;)}}\]]+)"""),
     r"\1'***'"),
    # SXP: (vncpasswd x) / (password 'x y')
    (re.compile(rf"""(?i)(\(\s*(?:{_KEYS})\s+)("[^"]*"|'[^']*'|[^\s()]+)"""), r"\1***"),
    # HTTP credentials (real ones are long: "bearer token required" is prose)
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{12,}"), r"\1 ***"),
]


def redact(text: str) -> str:
    """*text* with every secret-looking value replaced by ``***``."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class Redactor(logging.Filter):
    """Formats each record's message once and scrubs it (see ``redact``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:       # a bad format string: logging reports it itself
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


class Ring(logging.Handler):
    """The 'hypervisor console' xm dmesg prints: lifecycle messages, newest last."""

    def __init__(self, size: int = 2000):
        super().__init__(logging.INFO)
        self.lines = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter("(XEN) [%(asctime)s] %(message)s"))

    def emit(self, record):
        if record.name.startswith(("pyxen.domain", "pyxen.accel", "pyxen.xend", "pyxen.cgroups")):
            self.lines.append(self.format(record))


RING = Ring()


class _PrivateRotatingFile(logging.handlers.RotatingFileHandler):
    """A rotating log whose every file, first and rotated, is mode 0640."""

    def __init__(self, filename: str, **kw):
        fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, LOG_MODE)
        os.close(fd)
        os.chmod(filename, LOG_MODE)        # an older, wider file is narrowed
        super().__init__(filename, **kw)

    def doRollover(self):
        super().doRollover()
        os.chmod(self.baseFilename, LOG_MODE)


def setup_logging(logfile: str, level: str) -> None:
    handler = _PrivateRotatingFile(logfile, maxBytes=1 << 20, backupCount=5)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(process)d] %(levelname)s (%(name)s) %(message)s"))
    redactor = Redactor()
    for h in (handler, RING):
        h.filters[:] = [redactor]
    root = logging.getLogger()
    root.handlers[:] = [handler, RING]
    root.setLevel(getattr(logging, level, logging.DEBUG))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
