"""bench/migratestorage.py's pure parts: the summary, the verdict against
the raw copy (>= 0.8x) and the table, without booting anything."""

from bench import migratestorage as ms


def samples(raw_rates, ours):
    raw = [{"seconds": 1024 / r, "mib_s": r} for r in raw_rates]
    pyxen = [{"disk_mib_s": r, "seconds": 9.0, "wall_s": 9.5, "disk_seconds": 1024 / r} for r in ours]
    return raw, pyxen


def test_pass_and_fail_against_the_raw_copy():
    s = ms.summarize(*samples([100, 110], [90, 95]))
    assert s["raw_mib_s"]["median"] == 105 and s["pyxen_disk_mib_s"]["median"] == 92.5
    assert ms.compare(s) == {"ratio": round(92.5 / 105, 3), "target": 0.8, "pass": True}
    assert not ms.compare(ms.summarize(*samples([100], [70])))["pass"]
    assert not ms.compare(ms.summarize(*samples([], [70])))["pass"]


def test_table_says_pass_or_fail():
    s = ms.summarize(*samples([100], [90]))
    text = ms.format_table({"summary": s, "compare": ms.compare(s)})
    assert "PASS" in text and "qemu-img convert" in text and "MiB/s" in text
