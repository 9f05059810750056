"""Drive a guest the way a user does: ``xm console``, log in, run commands.

Used by the test suite, the demo and the benchmarks.  Everything goes
through the real ``xm console`` on a pseudo-terminal; there is no side door.
"""

from __future__ import annotations

import os
import re
import time

import pexpect

PROMPT = re.compile(rb"[\w.-]+:[^\r\n]*# (?:\x1b\[6n)?$")  # busybox ash may ask the cursor position
LOGIN = re.compile(rb"login: $")
ESC = "\x1d"


class GuestError(AssertionError):
    pass


class GuestConsole:
    def __init__(self, dom: str, env: dict | None = None, xm: str = "xm", timeout: float = 60):
        self.dom = dom
        self.timeout = timeout
        self.child = pexpect.spawn(xm, ["console", dom], env=env or dict(os.environ),
                                   timeout=timeout, maxread=65536)
        self.transcript = bytearray()
        self.child.logfile_read = _Tee(self.transcript)
        # xm console switches the terminal to raw mode (no echo) once it is
        # attached: from then on every key reaches the guest.
        if not self.child.waitnoecho(timeout):
            raise GuestError(f"{dom}: xm console did not attach within {timeout:.0f} s; output:\n{self.tail()}")

    # ---------------------------------------------------------------- waits
    def expect(self, pattern, timeout: float | None = None) -> bytes:
        try:
            self.child.expect(pattern, timeout=self.timeout if timeout is None else timeout)
        except pexpect.TIMEOUT:
            raise GuestError(f"{self.dom}: timed out waiting for {pattern!r}; console tail:\n"
                             f"{self.tail()}") from None
        except pexpect.EOF:
            raise GuestError(f"{self.dom}: console closed while waiting for {pattern!r}; tail:\n"
                             f"{self.tail()}") from None
        return self.child.before

    def tail(self, n: int = 1500) -> str:
        return bytes(self.transcript[-n:]).decode(errors="replace")

    def wait_login_prompt(self, timeout: float = 120) -> None:
        """Until the guest shows 'login:' (poking it with Enter if it already did)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                i = self.child.expect([LOGIN, PROMPT], timeout=min(5, max(0.1, deadline - time.monotonic())))
                if i == 1:      # already logged in from an earlier session
                    self.child.sendline("exit")
                    continue
                return
            except pexpect.TIMEOUT:
                if time.monotonic() > deadline:
                    raise GuestError(f"{self.dom}: no login prompt within {timeout:.0f} s; tail:\n"
                                     f"{self.tail()}") from None
                self.child.send("\r")
            except pexpect.EOF:
                raise GuestError(f"{self.dom}: console closed before the login prompt; tail:\n"
                                 f"{self.tail()}") from None

    def login(self, user: str = "root", password: str | None = None, timeout: float = 120) -> None:
        self.wait_login_prompt(timeout)
        self.child.send(user + "\r")
        if password is not None:
            self.expect(re.compile(rb"[Pp]assword: ?$"), 30)
            self.child.send(password + "\r")
        self.expect(PROMPT, 30)
        # Quiet the terminal for exact output: no echo-dependent parsing needed.
        self.run("export PS1='\\h:\\w# '")

    def run(self, cmd: str, timeout: float = 60) -> tuple[str, int]:
        """Run *cmd* in the guest shell; return (output, exit status)."""
        self.child.send(f"echo '__PX''BEGIN__'; {cmd}; echo \"__PX_RC_$?_END__\"\r")
        self.expect("__PXBEGIN__\r\n", timeout)
        self.expect(re.compile(rb"__PX_RC_(\d+)_END__"), timeout)
        out = self.child.before.decode(errors="replace").replace("\r\n", "\n").replace("\r", "")
        rc = int(self.child.match.group(1))
        self.expect(PROMPT, timeout)
        return out, rc

    def send(self, text: str) -> None:
        self.child.send(text)

    def close(self) -> int | None:
        """Detach with Ctrl-] as a user would; return xm console's exit status."""
        if self.child.isalive():
            self.child.send(ESC)
            try:
                self.child.expect(pexpect.EOF, timeout=10)
            except pexpect.TIMEOUT:
                self.child.terminate(force=True)
        self.child.close()
        return self.child.exitstatus

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Tee:
    def __init__(self, buf: bytearray):
        self.buf = buf

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > 1 << 20:
            del self.buf[:len(self.buf) - (1 << 20)]

    def flush(self) -> None:
        pass
