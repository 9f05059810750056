"""Run every benchmark: ``python -m bench [--runs N] [--json PATH]``.

Prints a plain table per benchmark and writes the boot results as JSON
(atomically: a temp file in the same directory, then a rename).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from . import boot, disk

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "boot.json"
DISK_JSON = Path(__file__).resolve().parent / "results" / "disk.json"


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench",
                                 description="Run pyxen's benchmarks; print tables, write JSON.")
    ap.add_argument("--runs", type=int, default=5, help="timed boots per side (default 5)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON,
                    help=f"where to write the results (default {DEFAULT_JSON})")
    ap.add_argument("--disk-json", type=Path, default=DISK_JSON,
                    help=f"where to write the disk results (default {DISK_JSON})")
    ap.add_argument("--only", choices=("boot", "disk"), help="run just one benchmark")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.only in (None, "boot"):
        result = boot.run(args.runs, progress=progress)
        print(boot.format_table(result))
        write_json(args.json, result)
        print(f"results written to {args.json}")
    if args.only in (None, "disk"):
        result = disk.run(progress=progress)
        print(disk.format_table(result))
        write_json(args.disk_json, result)
        print(f"results written to {args.disk_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
