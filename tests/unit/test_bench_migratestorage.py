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
    assert ms.compare(s) == {"ratio": round(92.5 / 105, 3), "target": 0.8, "pass": True, "ratio_to_tls": None}
    # Beside the plain copy, the same copy over QEMU's TLS-PSK (informative, no verdict).
    raw, ours = samples([100, 110], [90, 95])
    s = ms.summarize(raw, ours, [{"mib_s": 50.0}])
    assert ms.compare(s)["ratio_to_tls"] == round(92.5 / 50, 3) and ms.compare(s)["pass"]
    assert not ms.compare(ms.summarize(*samples([100], [70])))["pass"]
    assert not ms.compare(ms.summarize(*samples([], [70])))["pass"]


def test_table_says_pass_or_fail():
    s = ms.summarize(*samples([100], [90]))
    text = ms.format_table({"summary": s, "compare": ms.compare(s)})
    assert "PASS" in text and "qemu-img convert" in text and "MiB/s" in text


def test_cpu_watch_counts_a_busy_process():
    import subprocess
    p = subprocess.Popen(["python3", "-c", "import time\nwhile time.process_time() < 0.5: pass",
                          "pyxen-cpuwatch-mark"])
    w = ms.CpuWatch({"busy": "pyxen-cpuwatch-mark"})
    p.wait()
    used = w.usage()
    # It used 0.5 s of CPU (however loaded the host), less what it had before the first sample.
    assert 0.3 <= used.get("busy", 0) <= 0.8, used
