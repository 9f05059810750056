"""`make install` / `make uninstall` into a DESTDIR under a temp dir (never
the real /): the files a host keeps, and that uninstall takes them away."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def make(target: str, dest: Path, *extra: str) -> subprocess.CompletedProcess:
    if not shutil.which("make"):
        pytest.fail("make is not installed")
    return subprocess.run(["make", "-s", "-C", str(REPO), target, f"DESTDIR={dest}", "PREFIX=/usr",
                           "VENV=/opt/pyxen/venv", *extra],
                          capture_output=True, text=True, timeout=120)


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        k, _, v = line.partition("=")
        section.setdefault(k, []).append(v)
    return out


def lsb(path: Path) -> dict[str, str]:
    text = path.read_text()
    m = re.search(r"^### BEGIN INIT INFO\n(.*?)^### END INIT INFO$", text, re.S | re.M)
    assert m, f"{path} has no LSB header"
    return {k.strip(): v.strip() for k, v in re.findall(r"^# ([A-Za-z-]+):\s*(.*)$", m.group(1), re.M)}


def test_install_then_uninstall(tmp_path):
    dest = tmp_path / "root"
    res = make("install", dest)
    assert res.returncode == 0, res.stderr
    got = files(dest)
    for c in ("xend", "xm", "xentop", "xendomains", "pyxen", "pyxen-image"):
        link = dest / "usr/sbin" / c
        assert link.is_symlink() and os.readlink(link) == f"/opt/pyxen/venv/bin/{c}"
    # systemd units: paths follow the prefix, restart policy and fd limit set,
    # xendomains ordered after (and requiring) xend.
    xend = unit(dest / "etc/systemd/system/xend.service")
    assert xend["Service"]["ExecStart"] == ["/usr/sbin/xend start"]
    assert xend["Service"]["Restart"] == ["on-failure"]
    assert int(xend["Service"]["LimitNOFILE"][0]) >= 4096
    assert xend["Service"]["KillMode"] == ["process"]      # domains outlive xend
    xdoms = unit(dest / "etc/systemd/system/xendomains.service")
    assert "xend.service" in xdoms["Unit"]["After"][0].split()
    assert "xend.service" in xdoms["Unit"]["Requires"][0].split()
    assert xdoms["Service"]["ExecStop"] == ["/usr/sbin/xendomains stop"]
    assert "LimitNOFILE" in xdoms["Service"]
    # SysV scripts with LSB (and chkconfig) headers, executable.
    for name, needs in (("xend", "$network"), ("xendomains", "xend")):
        script = dest / "etc/init.d" / name
        assert os.access(script, os.X_OK)
        hdr = lsb(script)
        assert hdr["Provides"] == name and needs in hdr["Required-Start"].split()
        assert hdr["Default-Start"] and hdr["Default-Stop"]
        assert re.search(r"^# chkconfig: \d+ \d+ \d+$", script.read_text(), re.M)
        assert "/usr/sbin:" in script.read_text()
    # The network and vif scripts.
    shipped = {p.name for p in (REPO / "pyxen/data/scripts").iterdir()
               if p.is_file() and p.name != "__init__.py"}
    assert {"network-bridge", "vif-bridge", "network-vnet"} <= shipped
    for name in shipped:
        p = dest / "etc/xen/scripts" / name
        assert p.read_bytes() == (REPO / "pyxen/data/scripts" / name).read_bytes()
        assert os.access(p, os.X_OK) or name.endswith(".sh")
    # Man pages and completion: whatever the tree ships.
    for m in (REPO / "pyxen/data/man").glob("*.[1-8]") if (REPO / "pyxen/data/man").is_dir() else ():
        assert (dest / f"usr/share/man/man{m.suffix[1:]}" / m.name).is_file()
    if (REPO / "pyxen/data/completion/xm").is_file():
        assert (dest / "usr/share/bash-completion/completions/xm").is_file()

    # An administrator's edit survives a re-install and the uninstall.
    edited = dest / "etc/xen/scripts/vif-bridge"
    edited.write_text("#!/bin/sh\n# my own\n")
    assert make("install", dest).returncode == 0
    assert edited.read_text() == "#!/bin/sh\n# my own\n"
    (dest / "etc/xen/auto/mydomain").write_text("name = 'x'\n")

    res = make("uninstall", dest)
    assert res.returncode == 0, res.stderr
    left = files(dest)
    assert left == {"etc/xen/scripts/vif-bridge", "etc/xen/auto/mydomain"}, left
    assert got - left    # something was installed at all


def test_install_man_and_completion(tmp_path):
    """Installs whatever man pages and completion it is given, removes them
    again, and works when there are none (pyxen/data/man empty or missing)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "xm.1").write_text(".TH XM 1\n")
    (src / "xmdomain.cfg.5").write_text(".TH XMDOMAIN.CFG 5\n")
    (src / "xm").write_text("complete -F _xm xm\n")
    dest = tmp_path / "root"
    extra = (f"MANPAGES={src}/xm.1 {src}/xmdomain.cfg.5", f"COMPLETION_SRC={src}/xm")
    assert make("install", dest, *extra).returncode == 0
    assert (dest / "usr/share/man/man1/xm.1").read_text() == ".TH XM 1\n"
    assert (dest / "usr/share/man/man5/xmdomain.cfg.5").is_file()
    assert (dest / "usr/share/bash-completion/completions/xm").is_file()
    assert make("uninstall", dest, *extra).returncode == 0
    assert not [p for p in (dest / "usr/share").rglob("*") if p.is_file()]

    bare = tmp_path / "bare"
    res = make("install", bare, "MANPAGES=", f"COMPLETION_SRC={src}/missing")
    assert res.returncode == 0, res.stderr
    assert not (bare / "usr/share").exists()
