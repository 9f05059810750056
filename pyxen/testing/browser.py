"""Waiting on a page's state from the browser tests, under the page's own
Content-Security-Policy.

Playwright's ``wait_for_function`` evaluates a string predicate with
``eval`` inside the page, which xend's CSP (``script-src 'self'``, no
``unsafe-eval``) forbids — as it should.  ``page.evaluate`` goes through
the DevTools protocol instead, which the page's CSP does not govern, so
the tests poll with it rather than weaken the policy they run under.
"""

from __future__ import annotations

import time

# Debian's chromium (the Makefile installs it), headless, nothing fetched.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def launch(pw, **kw):
    """Debian's chromium through Playwright (*pw* from ``sync_playwright()``)."""
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, **kw)


def wait_js(page, expression: str, timeout: float = 30_000, interval: float = 0.1):
    """Poll *expression* (JavaScript, an expression or ``() => ...``) until
    it is truthy; *timeout* in milliseconds, as Playwright's.  Returns its value."""
    deadline = time.monotonic() + timeout / 1000
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout / 1000:.0f} s waiting for: {expression}")
        time.sleep(interval)
