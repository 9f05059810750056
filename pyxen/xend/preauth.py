"""One budget for every connection xend holds before it knows who is calling.

Anyone who can reach a TCP port of xend -- the relocation port, the HTTP
API -- can open connections and then say nothing.  Without a budget each
such connection holds a descriptor, a coroutine and (for a TLS handshake
run in a worker thread) one of xend's few shared worker threads, so a
dozen idle peers made ``xm create`` wait behind them and a thousand used
up xend's descriptors.  Every listener therefore admits its unauthenticated
connections through a :class:`Budget`:

* at most ``total`` at once, and at most ``per_peer`` from one address;
  one over either is closed at once (costing a descriptor for a moment);
* each must finish what it owes before authentication (TLS handshake,
  request headers and body, first protocol message) within ``deadline``
  seconds, or it is closed;
* blocking pre-authentication work (the relocation server's TLS
  handshake, its reverse DNS lookup) runs in the budget's own threads,
  one per admitted connection at most, never in the pool domain
  operations use;
* refusals are logged once per peer per ``LOG_EVERY`` seconds, and what
  was not logged is summed up in one line per interval, so a flood of
  connect-and-close cannot rotate the real log away.

A connection that authenticates hands its ticket back: the budget only
ever counts strangers.  ``(xend-preauth-...)`` in xend-config.sxp sets the
numbers; docs/robustness.md says what a peer sees.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import time

__all__ = ["Budget", "Ticket", "RefusalLog", "from_config"]

LOG_EVERY = 60.0        # seconds between two logged refusals of one peer


class RefusalLog:
    """Rate-limited refusal messages: the first refusal of a peer in each
    interval is logged in full, the rest are counted and summed up."""

    def __init__(self, log: logging.Logger, what: str, every: float = LOG_EVERY,
                 clock=time.monotonic, refused_as: str | None = None):
        self.log, self.what, self.every, self.clock = log, what, every, clock
        # The words of a full refusal line: "<refused_as> from <peer>: <why>".
        self.refused_as = refused_as or f"{what}: refused a connection"
        self._last: dict[tuple, float] = {}
        self._quiet: collections.Counter = collections.Counter()
        self._window = clock()

    def refused(self, peer: str, why: str, kind: str | None = None) -> None:
        """Log a refusal of *peer*, unless one of the same *kind* (default:
        the same words) was logged for it less than ``every`` seconds ago."""
        now = self.clock()
        self._maybe_summarize(now)
        key = (peer, kind or why)
        last = self._last.get(key)
        if last is None or now - last >= self.every:
            self._last[key] = now
            self.log.warning("%s from %s: %s", self.refused_as, peer, why)
        else:
            self._quiet[peer] += 1

    @property
    def pending(self) -> int:
        """Refusals counted but not yet summed up in the log."""
        return sum(self._quiet.values())

    def _maybe_summarize(self, now: float) -> None:
        if now - self._window < self.every:
            return
        self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Write the summary line of what was left out, if anything was."""
        now = self.clock() if now is None else now
        if self._quiet:
            top = ", ".join(f"{p} x{n}" for p, n in self._quiet.most_common(3))
            self.log.warning("%s: %d more connection(s) from %d address(es) refused in the last %.0f s "
                             "(not logged one by one; most: %s)", self.what, sum(self._quiet.values()),
                             len(self._quiet), now - self._window, top)
            self._quiet.clear()
        self._window = now
        # Forget peers not seen for a while, so the table stays small.
        self._last = {p: t for p, t in self._last.items() if now - t < self.every}


class Ticket:
    """One admitted unauthenticated connection; ``release()`` when it has
    authenticated or closed (twice is harmless)."""

    def __init__(self, budget: "Budget", peer: str):
        self.budget, self.peer = budget, peer
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget._release(self.peer)


class Budget:
    """Admission of unauthenticated connections for one listener (see module doc)."""

    def __init__(self, what: str, log: logging.Logger, total: int = 64, per_peer: int = 8,
                 deadline: float = 10.0, max_body: int = 65536, refused_as: str | None = None):
        self.what = what
        self.total = max(1, total)
        self.per_peer = max(1, per_peer)
        self.deadline = float(deadline)
        self.max_body = max_body
        self.refusals = RefusalLog(log, what, refused_as=refused_as)
        self._by_peer: collections.Counter = collections.Counter()
        self._held = 0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._flusher: asyncio.TimerHandle | None = None

    @property
    def held(self) -> int:
        return self._held

    def admit(self, peer: str) -> Ticket | None:
        """A ticket for a new connection from *peer*, or None (refusal logged)."""
        if self._held >= self.total:
            self._refuse(peer, f"{self._held} unauthenticated connections already open "
                               f"(xend-preauth-max-connections {self.total})", "cap")
            return None
        if self._by_peer[peer] >= self.per_peer:
            self._refuse(peer, f"{self._by_peer[peer]} unauthenticated connections already open from it "
                               f"(xend-preauth-max-per-peer {self.per_peer})", "cap")
            return None
        self._held += 1
        self._by_peer[peer] += 1
        return Ticket(self, peer)

    def refuse(self, peer: str, why: str, kind: str | None = None) -> None:
        """Log (rate-limited) a refusal decided elsewhere, e.g. hosts-allow."""
        self._refuse(peer, why, kind)

    def _refuse(self, peer: str, why: str, kind: str | None = None) -> None:
        self.refusals.refused(peer, why, kind)
        # A summary also comes when the flood stops, not only at the next refusal.
        if self.refusals.pending and self._flusher is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._flusher = loop.call_later(self.refusals.every, self._flush)

    def _flush(self) -> None:
        self._flusher = None
        self.refusals.flush()

    def _release(self, peer: str) -> None:
        self._held -= 1
        self._by_peer[peer] -= 1
        if self._by_peer[peer] <= 0:
            del self._by_peer[peer]

    async def run(self, fn, *args):
        """Run blocking pre-authentication work in the budget's own threads
        (as many as admitted connections, so none waits behind another)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.total, thread_name_prefix=f"preauth-{self.what}")
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.refusals.flush()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def from_config(cfg, what: str, log: logging.Logger, refused_as: str | None = None) -> Budget:
    """The budget xend-config.sxp asks for, for the listener *what*."""
    return Budget(what, log, total=cfg["xend-preauth-max-connections"],
                  per_peer=cfg["xend-preauth-max-per-peer"], deadline=cfg["xend-preauth-timeout"],
                  max_body=cfg["xend-preauth-max-body"], refused_as=refused_as)
