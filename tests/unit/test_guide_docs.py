"""The user's guide's structure, its transcript format, and a strict build.

The examples themselves run in tests/system/test_guide.py; here: both
languages have the same pages including the same example files in the same
order, every shell block is either an included example or says why it is
not run, no example file is orphaned, and `mkdocs build --strict` passes
(a broken link, image or include fails).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyxen.testing import guide, transcript


def test_both_languages_have_the_same_pages():
    en = [p.name for p in guide.pages("en")]
    zh = [p.name for p in guide.pages("zh")]
    assert en and en == zh


@pytest.mark.parametrize("page", [p.name for p in guide.pages("en")])
def test_languages_share_their_examples(page):
    en = guide.included_examples(guide.PAGES / "en" / page)
    zh = guide.included_examples(guide.PAGES / "zh" / page)
    assert en == zh, f"{page}: English includes {en}, Chinese {zh}"
    for inc in en:
        assert inc.startswith(page[:-3] + "/"), f"{page} includes another page's example {inc}"
        assert (guide.EXAMPLES / inc).is_file(), inc


@pytest.mark.parametrize("lang", guide.LANGUAGES)
def test_every_shell_block_runs_or_says_why_not(lang):
    for page in guide.pages(lang):
        for b in guide.blocks(page):
            if b.lang not in guide.SHELL_LANGS:
                continue
            where = f"{page.relative_to(guide.GUIDE)}:{b.line}"
            if b.includes:
                assert all(guide.INCLUDE.match(ln) for ln in b.body if ln.strip()), \
                    f"{where}: an included example block holds nothing else"
            else:
                assert guide.NOT_RUN.search(b.info), f'{where}: a shell block neither included nor title="not run: why"'


def test_no_orphan_examples():
    used = {inc for p in guide.pages("en") for inc in guide.included_examples(p)}
    files = {str(f.relative_to(guide.EXAMPLES)) for f in guide.EXAMPLES.glob("*/*.console")
             if f.name != guide.SETUP}
    assert files == used, f"not included by any page: {sorted(files - used)}"


@pytest.mark.parametrize("path", sorted(guide.EXAMPLES.glob("*/*.console")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_examples_parse(path):
    steps = transcript.parse(path.read_text(), str(path))
    assert steps, f"{path}: no command"


def test_transcript_format():
    text = ("# xm list\nName ID\nDomain-0 0 ...\n...\n"
            "hostb# cat > /etc/x <<'EOF'\n# not a prompt\nEOF\n"
            "# echo a \\\n  b\na b\n")
    s = transcript.parse(text)
    assert [(x.host, x.line) for x in s] == [("", 1), ("hostb", 5), ("", 8)]
    assert s[1].command.endswith("# not a prompt\nEOF") and s[1].expected == []
    assert s[2].command == "echo a \\\n  b"
    assert transcript.matches(s[0].expected, "Name   ID\nDomain-0   0 24105 2\nVM1 1\nVM2 2\n")
    assert transcript.matches(s[0].expected, "Name ID\nDomain-0 0 x\n")
    assert not transcript.matches(s[0].expected, "Name ID\nDomain-1 0 x\n")
    assert not transcript.matches(["exit 0"], "exit 1\n")
    assert transcript.matches([], "\n")
    assert not transcript.matches([], "something\n")
    with pytest.raises(transcript.TranscriptError, match="^x:1: output before"):
        transcript.parse("output first\n# cmd\n", "x")
    with pytest.raises(transcript.TranscriptError, match="never closed"):
        transcript.parse("# cat <<EOF\nabc\n", "x")


def test_guide_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    res = subprocess.run([str(mkdocs), "build", "--strict", "-q", "-f", str(guide.GUIDE / "mkdocs.yml"),
                          "-d", str(tmp_path / "site")], capture_output=True, text=True,
                         env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    en = (tmp_path / "site/first-domain.html").read_text()
    zh = (tmp_path / "site/zh/first-domain.html").read_text()
    # The shared example is in both languages, and the language switch links them.
    assert "Started domain ExampleDomain (id=1)" in en and "Started domain ExampleDomain (id=1)" in zh
    assert "第一个域" in zh and "简体中文" in en
