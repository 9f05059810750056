"""Where the user's guide keeps its pages and examples, and what they include.

The guide (docs/guide) is MkDocs: ``pages/en`` and ``pages/zh`` hold the
same pages in English and Simplified Chinese, ``examples/<page>/`` the
console transcripts both languages include with pymdownx.snippets
(``--8<-- "<page>/<name>.console"`` inside a ``console`` fence).  The unit
tests check that structure and build the HTML; tests/system/test_guide.py
runs the transcripts.  This module only reads files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide"
PAGES = GUIDE / "pages"
EXAMPLES = GUIDE / "examples"
LANGUAGES = ("en", "zh")
# A page's hidden set-up (``examples/<page>/setup.console``): run before the
# page's examples, never shown (xend start on a fresh host, mostly).
SETUP = "setup.console"

INCLUDE = re.compile(r'^\s*--8<--\s+"(?P<path>[^"]+)"\s*$')
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<info>[^`]*)$")
SHELL_LANGS = {"console", "sh", "shell", "bash", "shell-session"}
# Why a shell block is not run, in its title: title="not run: needs a second
# physical host" (shown above the block on the page, so the reader knows).
NOT_RUN = re.compile(r'title="(not run|未运行)[:：][^"]+"')


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    info: str
    body: list[str]

    @property
    def includes(self) -> list[str]:
        return [m.group("path") for ln in self.body if (m := INCLUDE.match(ln))]


def pages(lang: str) -> list[Path]:
    return sorted((PAGES / lang).glob("*.md"))


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page (fences may be indented, as in admonitions)."""
    out, cur, fence = [], None, ""
    for n, line in enumerate(page.read_text().splitlines(), 1):
        m = FENCE.match(line)
        if cur is None:
            if m:
                info = m.group("info").strip()
                cur, fence = Block(page, n, (info.split() or [""])[0].strip("{}."), info, []), m.group("fence")
        elif m and m.group("fence").startswith(fence) and not m.group("info").strip():
            out.append(cur)
            cur = None
        else:
            cur.body.append(line)
    return out


def included_examples(page: Path) -> list[str]:
    """The example files a page includes, in order ("<page>/<name>.console")."""
    return [inc for b in blocks(page) for inc in b.includes]


def page_examples(name: str) -> tuple[Path | None, list[Path]]:
    """A page's set-up (or None) and examples, in the order the English page shows them."""
    setup = EXAMPLES / name / SETUP
    files = [EXAMPLES / inc for inc in included_examples(PAGES / "en" / f"{name}.md")]
    return (setup if setup.exists() else None), files
