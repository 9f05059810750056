"""Console transcripts: the runnable examples of the user's guide.

A transcript is what an admin sees at a root shell, one file per example
(``docs/guide/examples/<page>/<name>.console``), included verbatim into the
English and the Chinese page.  ``parse`` turns it into steps (command and
expected output) and ``matches`` compares what a command really printed
with what the guide says it prints.  The test that runs them against a real
xend is tests/system/test_guide.py; nothing here starts a process.

The format, chosen so that a transcript reads as a plain terminal session:

* ``# CMD`` is a command on the default host; ``NAME# CMD`` (``hostb# ...``)
  on another host of the same page (migration needs two).
* A command continues on the next line after a trailing ``\\``, and a
  here-document (``<<'EOF'`` or ``<<EOF``) runs up to its terminator line,
  so config files are written as an admin would paste them.
* Every other line is expected output (stdout and stderr as a terminal
  interleaves them).  ``...`` inside a line matches any text (times, memory
  sizes), a line that is only ``...`` matches any number of lines, and a
  run of blanks matches any run of blanks (xm's columns widen with names).
* The exit status must be 0; an example that shows a refusal says so in
  the open with ``; echo "exit $?"``, which prints the status it checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PROMPT = re.compile(r"^(?:(?P<host>[a-z][a-z0-9-]*))?# (?P<cmd>.*)$")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(?P<word>[A-Za-z_][A-Za-z0-9_]*)\1")
ANY_LINES = "..."


class TranscriptError(ValueError):
    """A transcript that cannot be run as written (says file and line)."""


@dataclass
class Step:
    host: str           # "" for the default host
    command: str        # as bash gets it (continuations and here-documents kept)
    expected: list[str] = field(default_factory=list)
    line: int = 0       # where the command starts in its file, for messages


def parse(text: str, source: str = "<transcript>") -> list[Step]:
    lines = text.splitlines()
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = PROMPT.match(line)
        if not m:
            if not steps:
                raise TranscriptError(f"{source}:{i + 1}: output before the first '# command' line")
            steps[-1].expected.append(line.rstrip())
            i += 1
            continue
        start = i
        cmd = [m.group("cmd")]
        # Continuation lines, then any here-document bodies the command opened.
        while cmd[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd.append(lines[i])
        for hd in HEREDOC.finditer("\n".join(cmd)):
            word = hd.group("word")
            while True:
                i += 1
                if i >= len(lines):
                    raise TranscriptError(f"{source}:{start + 1}: here-document '{word}' is never closed")
                cmd.append(lines[i])
                if lines[i].strip() == word:
                    break
        steps.append(Step(m.group("host") or "", "\n".join(cmd), [], start + 1))
        i += 1
    for s in steps:
        while s.expected and not s.expected[-1]:
            s.expected.pop()
    return steps


def _line_regex(expected: str) -> str:
    parts = re.split(r"(\.\.\.|[ \t]+)", expected)
    out = []
    for p in parts:
        if p == ANY_LINES:
            out.append(".*")
        elif p and p.isspace():
            out.append(r"[ \t]+")
        else:
            out.append(re.escape(p))
    return "".join(out)


def pattern(expected: list[str]) -> re.Pattern:
    """The expected lines as one regular expression over the whole output."""
    rx = []
    for line in expected:
        if line.strip() == ANY_LINES:
            rx.append(r"(?:[^\n]*\n)*?")
        else:
            rx.append(_line_regex(line) + r"\n")
    return re.compile("".join(rx))


def normalise(output: str) -> str:
    """Output as compared: trailing blanks and trailing empty lines dropped."""
    lines = [ln.rstrip() for ln in output.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "".join(ln + "\n" for ln in lines)


def matches(expected: list[str], output: str) -> bool:
    return pattern(expected).fullmatch(normalise(output)) is not None
