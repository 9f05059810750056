"""Golden tests for the xm layouts scripts depend on."""

from pyxen.xm import format as fmt


def test_list_layout_exact():
    doms = [{"name": "Domain-0", "domid": 0, "memory": 1024, "vcpus": 2, "online_vcpus": 2,
             "state": "r-----", "cpu_time": 123.44},
            {"name": "alpha", "domid": 7, "memory": 128, "vcpus": 1, "state": "-b----", "cpu_time": 5.06}]
    assert fmt.list_table(doms) == (
        "Name                                        ID   Mem VCPUs      State   Time(s)\n"
        "Domain-0                                     0  1024     2     r-----    123.4\n"
        "alpha                                        7   128     1     -b----      5.1\n")


def test_info_layout():
    assert fmt.info([["host", "h1"], ["cc_compile_date", ""]]) == \
        "host                   : h1\ncc_compile_date        : (none)\n"


def test_uptime_layout():
    assert fmt.UPTIME_HEADER == "Name" + " " * 32 + "ID Uptime "
    row = fmt.uptime_row({"name": "d", "domid": 3, "up_time": 90061})
    assert row == "d" + " " * 36 + "3 1 day,  1:01:01"
