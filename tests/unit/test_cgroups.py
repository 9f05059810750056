"""pyxen.hypervisor.cgroups on a fake cgroup v1 tree: a domain with the
default weight and no cap is left where it is (no group, nothing written);
other values, or a group that already exists, are written; groups sit at
the top of the hierarchy."""

import pytest

from pyxen.hypervisor import cgroups


@pytest.fixture
def v1(tmp_path, monkeypatch):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.shares").write_text("1024\n")
    monkeypatch.setattr(cgroups, "ROOT", tmp_path)
    return tmp_path


def _group(root, uuid):
    d = root / "cpu" / f"{cgroups.GROUP}-{uuid}"
    d.mkdir()
    for f in ("cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us", "cgroup.procs"):
        (d / f).write_text("")
    return d


def test_default_weight_and_no_cap_makes_no_group(v1):
    cgroups.apply("u1", 4242, cgroups.DEFAULT_WEIGHT, 0)
    assert sorted(p.name for p in (v1 / "cpu").iterdir()) == ["cpu.shares"]
    assert cgroups.read("u1") is None


def test_other_values_are_written(v1):
    d = _group(v1, "u2")
    cgroups.apply("u2", 4242, 512, 25)
    assert (d / "cpu.shares").read_text() == "2048"
    assert (d / "cpu.cfs_quota_us").read_text() == "25000"
    assert (d / "cgroup.procs").read_text() == "4242"


def test_back_to_default_in_an_existing_group_is_written(v1):
    d = _group(v1, "u3")
    (d / "cpu.shares").write_text("2048")
    cgroups.apply("u3", 4242, cgroups.DEFAULT_WEIGHT, 0)
    assert (d / "cpu.shares").read_text() == "1024"
    assert (d / "cpu.cfs_quota_us").read_text() == "-1"


def test_groups_sit_at_the_top_not_under_a_common_parent(v1):
    # One parent for every domain would weigh as one process in all.
    assert cgroups.group_dir("u5") == v1 / "cpu" / f"{cgroups.GROUP}-u5"


def test_no_controller_and_default_values_is_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "ROOT", tmp_path / "none")
    cgroups.apply("u4", 4242, cgroups.DEFAULT_WEIGHT, 0)      # nothing to enforce: no error
    with pytest.raises(cgroups.CgroupError):
        cgroups.apply("u4", 4242, 512, 0)
