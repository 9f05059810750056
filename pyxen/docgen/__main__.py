"""``python -m pyxen.docgen [--check]``: write (or check) the generated man
pages and bash completion under pyxen/data."""

from __future__ import annotations

import sys
from pathlib import Path

from . import completion, man

DATA = Path(__file__).resolve().parent.parent / "data"


def generated() -> dict[Path, str]:
    out = {DATA / "man" / name: text for name, text in man.render().items()}
    out[DATA / "completion" / "xm"] = completion.bash()
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path, text in generated().items():
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    for path in stale:
        print(f"stale: {path} (run make man)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
