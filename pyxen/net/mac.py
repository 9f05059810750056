"""MAC addresses for vifs that do not name one.

Xen's rule: ``00:16:3e`` (XenSource's OUI) followed by three random bytes,
the first of them at most 0x7f (the upper half of that block was kept for
other uses).  xend also keeps them unique among the host's domains.
"""

from __future__ import annotations

import random

PREFIX = "00:16:3e"
_rng = random.SystemRandom()


def random_mac(rng: random.Random | None = None) -> str:
    r = rng or _rng
    return "%s:%02x:%02x:%02x" % (PREFIX, r.randint(0x00, 0x7f), r.randint(0x00, 0xff), r.randint(0x00, 0xff))


def normal(mac: str) -> str:
    return mac.strip().lower()


def allocate(used: set[str], rng: random.Random | None = None) -> str:
    """A random Xen MAC not in *used* (compared case-insensitively)."""
    taken = {normal(m) for m in used}
    for _ in range(1000):
        mac = random_mac(rng)
        if mac not in taken:
            return mac
    raise RuntimeError("no free MAC address found in 00:16:3e:00:00:00-00:16:3e:7f:ff:ff")
