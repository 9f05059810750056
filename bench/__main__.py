"""Run every benchmark: ``python -m bench [--only NAME] [--runs N] [--json PATH]
[--save-runs N] [--save-json PATH] [--migrate-runs IDLE,DIRTY] [--migrate-json PATH]
[--scale-domains N] [--scale-json PATH] [--cluster-failures N] [--cluster-json PATH]``.

Prints a plain table per benchmark and writes each one's results as JSON
(atomically: a temp file in the same directory, then a rename).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from . import boot, cluster, disk, migrate, migratestorage, saverestore, scale

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS / "boot.json"
SAVE_JSON = RESULTS / "saverestore.json"
DISK_JSON = RESULTS / "disk.json"
MIGRATE_JSON = RESULTS / "migrate.json"
SCALE_JSON = RESULTS / "scale.json"
MIGRATE_STORAGE_JSON = RESULTS / "migrate-storage.json"
CLUSTER_JSON = RESULTS / "cluster.json"


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
    ap.add_argument("--only", choices=("boot", "disk", "saverestore", "migrate", "migrate-storage", "scale",
                                       "cluster"), help="run just this benchmark")
    ap.add_argument("--runs", type=int, default=5, help="timed boots per side (default 5)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON,
                    help=f"where to write the boot results (default {DEFAULT_JSON})")
    ap.add_argument("--disk-json", type=Path, default=DISK_JSON,
                    help=f"where to write the disk results (default {DISK_JSON})")
    ap.add_argument("--save-runs", type=int, default=5,
                    help="timed save/restore rounds per guest size (default 5)")
    ap.add_argument("--save-json", type=Path, default=SAVE_JSON,
                    help=f"where to write the save/restore results (default {SAVE_JSON})")
    runs = f"{migrate.DEFAULT_RUNS['idle']},{migrate.DEFAULT_RUNS['dirty']}"
    ap.add_argument("--migrate-runs", default=runs, metavar="IDLE,DIRTY",
                    help=f"live migrations per side for idle and for dirtying guests (default {runs}: "
                         "the idle downtime target wants at least 6)")
    ap.add_argument("--migrate-json", type=Path, default=MIGRATE_JSON,
                    help=f"where to write the migration results (default {MIGRATE_JSON})")
    ap.add_argument("--migrate-storage-runs", type=int, default=2, metavar="N",
                    help="storage migrations (and raw copies) timed (default 2)")
    ap.add_argument("--migrate-storage-json", type=Path, default=MIGRATE_STORAGE_JSON,
                    help=f"where to write the storage migration results (default {MIGRATE_STORAGE_JSON})")
    ap.add_argument("--scale-domains", type=int, default=scale.DOMAINS, metavar="N",
                    help=f"paused domains the scale benchmark creates (default {scale.DOMAINS})")
    ap.add_argument("--scale-json", type=Path, default=SCALE_JSON,
                    help=f"where to write the scale results (default {SCALE_JSON})")
    ap.add_argument("--cluster-failures", type=int, default=20, metavar="N",
                    help="host failures the cluster benchmark injects (default 20, the issue's count; "
                         "about 30 s each with the rejoin, some 12 minutes in all)")
    ap.add_argument("--cluster-json", type=Path, default=CLUSTER_JSON,
                    help=f"where to write the cluster results (default {CLUSTER_JSON})")
    args = ap.parse_args(argv)
    try:
        idle, dirty = (int(n) for n in args.migrate_runs.split(","))
    except ValueError:
        ap.error(f"--migrate-runs: expected two counts like 3,2, got {args.migrate_runs!r}")
    if idle < 1 or dirty < 1:
        ap.error("--migrate-runs counts must be at least 1")
    if args.runs < 1 or args.save_runs < 1:
        ap.error("--runs and --save-runs must be at least 1")
    if args.cluster_failures < 1:
        ap.error("--cluster-failures must be at least 1")
    if args.scale_domains < 1:
        ap.error("--scale-domains must be at least 1")
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
    if args.only in (None, "saverestore"):
        result = saverestore.run(args.save_runs, progress=progress)
        print(saverestore.format_table(result))
        write_json(args.save_json, result)
        print(f"results written to {args.save_json}")
    if args.only in (None, "migrate"):
        result = migrate.run({"idle": idle, "dirty": dirty}, progress=progress)
        print(migrate.format_table(result))
        write_json(args.migrate_json, result)
        print(f"results written to {args.migrate_json}")
    if args.only in (None, "migrate-storage"):
        result = migratestorage.run(args.migrate_storage_runs, progress=progress)
        print(migratestorage.format_table(result))
        write_json(args.migrate_storage_json, result)
        print(f"results written to {args.migrate_storage_json}")
    if args.only in (None, "scale"):
        result = scale.run(args.scale_domains, progress=progress)
        print(scale.format_table(result))
        write_json(args.scale_json, result)
        print(f"results written to {args.scale_json}")
    if args.only in (None, "cluster"):
        result = cluster.run(args.cluster_failures, progress=progress)
        print(cluster.format_table(result))
        write_json(args.cluster_json, result)
        print(f"results written to {args.cluster_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
