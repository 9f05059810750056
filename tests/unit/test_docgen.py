"""The generated man pages and bash completion (pyxen.docgen): the committed
files are what the tables make today, every command, option and variable
has its help, and the completion script completes from xend and etc/xen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pyxen.config import options, xendconfig
from pyxen.docgen import __main__ as gen
from pyxen.docgen import completion, man
from pyxen.ops import commands as xmtable


def test_committed_files_are_not_stale():
    stale = [str(p) for p, text in gen.generated().items() if not p.exists() or p.read_text() != text]
    assert not stale, f"stale, run make man: {stale}"
    names = {p.name for p in gen.generated()}
    assert names == {"xm.1", "xmdomain.cfg.5", "xend-config.sxp.5", "xentop.1", "xendomains.8", "pyxen.8", "xm"}
    assert {p.name for p in (gen.DATA / "man").iterdir()} == names - {"xm"}


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "DATA", tmp_path)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    (tmp_path / "man" / "xm.1").write_text("old\n")
    assert gen.main(["--check"]) == 1


def test_every_entry_has_help_and_is_on_its_page():
    pages = man.render()
    for c in xmtable.COMMANDS:
        assert c.help.strip() and all(o.help.strip() for o in c.opts), c.name
        assert f"\\fBxm {c.name.replace('-', chr(92) + '-')}\\fR" in pages["xm.1"], c.name
    for v in options.VARS:
        assert v.help.strip(), v.name
        assert f"\\fB{v.name}\\fR" in pages["xmdomain.cfg.5"].replace("\\-", "-"), v.name
    for o in xendconfig.OPTIONS:
        assert o.help.strip(), o.name
        assert f"(\\fB{o.name.replace('-', chr(92) + '-')}\\fR" in pages["xend-config.sxp.5"], o.name
    assert "\\-\\-iterations" in pages["xentop.1"] and "\\-\\-client" in pages["pyxen.8"]
    assert "XENDOMAINS_AUTO" in pages["xendomains.8"]


def test_xm_help_names_the_man_pages():
    from pyxen.xm.commands import long_help, short_help
    for text in (short_help(), long_help()):
        assert "xm(1) man page" in text and "xmdomain.cfg(5)" in text


def _complete(script: Path, words: list[str], env: dict) -> list[str]:
    line = " ".join(words)
    code = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _xm; "
            "printf '%s\\n' \"${COMPREPLY[@]}\"")
    res = subprocess.run(["bash", "-c", code], capture_output=True, text=True, env=env, check=True)
    return [w for w in res.stdout.split("\n") if w]


def test_bash_completion(tmp_path):
    script = tmp_path / "xm-completion"
    script.write_text(completion.bash())
    subprocess.run(["bash", "-n", str(script)], check=True)
    # A stand-in xm on PATH answers 'xm list' as xend would.
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "xm").write_text("#!/bin/sh\n[ \"$1\" = list ] && printf 'Name ID Mem\\nDomain-0 0 1\\nweb1 3 128\\n'\n")
    (bin_ / "xm").chmod(0o755)
    root = tmp_path / "root"
    (root / "etc/xen/auto").mkdir(parents=True)
    (root / "etc/xen/guest1").write_text("name='guest1'\n")
    (root / "etc/xen/xend-config.sxp").write_text("")
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", PYXEN_ROOT=str(root))
    assert _complete(script, ["xm", "mem-"], env) == ["mem-max", "mem-set"]
    assert _complete(script, ["xm", "pause", "w"], env) == ["web1"]
    assert _complete(script, ["xm", "create", "gu"], env) == ["guest1"]
    assert set(_complete(script, ["xm", "migrate", "--"], env)) == {"--live", "--port", "--resource",
                                                                    "--downtime", "--progress", "--copy-storage",
                                                                    "--shared-disk"}
    assert _complete(script, ["xm", "sched-credit", "-d", ""], env) == ["Domain-0", "web1"]
    assert "network-attach" in _complete(script, ["xm", "help", "net"], env)


def test_make_man_writes_the_files():
    # (what `make man` runs; --check: the tree is already current)
    res = subprocess.run([sys.executable, "-m", "pyxen.docgen", "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
