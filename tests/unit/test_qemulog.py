"""qemulog: QEMU's own reason, from this QEMU's part of the qemu-dm log."""

from pyxen.hypervisor.qemu import qemulog


def test_the_specific_line_before_the_generic_one(tmp_path):
    log = tmp_path / "qemu-dm-a.log"
    log.write_text("qemu-system-x86_64: old QEMU's error\n")
    at = qemulog.mark(log)
    with open(log, "a") as f:
        f.write("Invalid read at addr 0x0, size 4, region '(null)', reason: rejected\n"
                "qemu-system-x86_64: Unknown savevm section or instance '0000:00:05.0/virtio-blk' 0. "
                "Make sure that your current VM setup matches your saved VM setup\n"
                "qemu-system-x86_64: load of migration failed: Invalid argument\n")
    assert qemulog.last_error(log, at).startswith("Unknown savevm section or instance '0000:00:05.0/virtio-blk'")
    assert qemulog.reason(log, at).startswith("; QEMU says: Unknown savevm section")


def test_nothing_from_this_qemu(tmp_path):
    log = tmp_path / "l"
    log.write_text("qemu-system-x86_64: an earlier QEMU's error\n")
    assert qemulog.reason(log, qemulog.mark(log)) == ""
    assert qemulog.reason(tmp_path / "missing") == ""
    log.write_text("qemu-system-x86_64: load of migration failed: Invalid argument\n")
    assert qemulog.last_error(log) == "load of migration failed: Invalid argument"
