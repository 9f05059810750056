"""``make demo``: the manual's chapter 3 on this machine, start to finish.

Starts xend, creates a domain from the shipped ``xmexample1``, prints
``xm list`` and the guest's console up to its login prompt, then shuts the
domain down through the guest's own poweroff.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .testing.guest import GuestConsole, GuestError

NAME = "ExampleDomain"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    print(f"# {' '.join(argv)}", flush=True)
    res = subprocess.run(argv, text=True, capture_output=True)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    if check and res.returncode != 0:
        raise SystemExit(f"demo: {' '.join(argv)} failed (exit {res.returncode})")
    return res


def main() -> int:
    sh("xend", "start")
    sh("xm", "info")
    if subprocess.run(["xm", "domid", NAME], capture_output=True).returncode == 0:
        sh("xm", "destroy", NAME)
    sh("xm", "create", "xmexample1")
    sh("xm", "list")
    print(f"# xm console {NAME}    (up to the login prompt; Ctrl-] detaches)", flush=True)
    con = GuestConsole(NAME)
    try:
        con.wait_login_prompt(timeout=180)
        sys.stdout.write(con.tail(200000).replace("\r", ""))
        print("\n", flush=True)
        con.login()
        out, _ = con.run("uname -a")
        print(f"# (in the guest) uname -a\n{out}", flush=True)
    except GuestError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        con.close()
    sh("xm", "shutdown", "-w", NAME)
    sh("xm", "list")
    print("demo: done. xend is still running; 'xend stop' stops it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
