"""The pure parts of bench/disk.py: ratios, the choice, the table, the guest argv."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds bench/

from bench import disk  # noqa: E402


def _result():
    host = {"seq_write_mib_s": 100.0, "seq_read_mib_s": 200.0, "rand_read_iops": 1000.0}
    fast = {"seq_write_mib_s": 50.0, "seq_read_mib_s": 400.0, "rand_read_iops": 500.0}
    slow = {"seq_write_mib_s": 50.0, "seq_read_mib_s": 100.0, "rand_read_iops": 400.0}
    variants = {"aio=threads,cache.direct=off": {"guest": fast, "ratio": disk.ratios(fast, host)},
                "aio=native,cache.direct=on": {"guest": slow, "ratio": disk.ratios(slow, host)}}
    return {"size_mib": 64, "random_reads": 200, "runs": 2, "host": {"accel": "tcg"}, "host_file": host,
            "variants": variants, "best": disk.best(variants), "default": "aio=threads,cache.direct=off"}


def test_ratios_best_and_best_of():
    r = _result()
    assert r["variants"]["aio=threads,cache.direct=off"]["ratio"] == {
        "seq_write_mib_s": 0.5, "seq_read_mib_s": 2.0, "rand_read_iops": 0.5}
    assert r["best"] == "aio=threads,cache.direct=off"
    assert disk.best_of([{"a": 1.0, "b": 5.0}, {"a": 3.0, "b": 2.0}]) == {"a": 3.0, "b": 5.0}


def test_table_marks_the_default():
    table = disk.format_table(_result())
    assert "host file" in table and "(2.00x)" in table
    line = next(x for x in table.splitlines() if x.startswith("aio=threads"))
    assert line.endswith("<- default")


def test_guest_disk_goes_straight_to_qemu_with_the_variant(tmp_path):
    image = Path("/var/lib/pyxen/images/default")
    argv = disk.guest_argv("io_uring", True, image, tmp_path / "d.img", tmp_path)
    nodes = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"]
    assert nodes[0]["driver"] == "file" and nodes[0]["aio"] == "io_uring"
    assert nodes[0]["cache"] == {"direct": True}
    assert "loop" not in " ".join(argv)
    # The builder's defaults are restored afterwards.
    from pyxen.hypervisor.qemu import argv as qargv
    assert (qargv.FILE_AIO, qargv.FILE_CACHE_DIRECT) == ("threads", False)
