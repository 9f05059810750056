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


def test_vcpu_list_layout():
    assert fmt.VCPU_HEADER == "Name                                ID  VCPU   CPU State   Time(s) CPU Affinity"
    on = {"vcpu": 0, "online": True, "cpu": 1, "running": True, "blocked": False, "cpu_time": 12.34,
          "affinity": "any cpu"}
    off = {"vcpu": 1, "online": False, "cpu": -1, "running": False, "blocked": False, "cpu_time": 0.0,
           "affinity": "any cpu"}
    assert fmt.vcpu_row("Domain-0", 0, on) == \
        "Domain-0                             0     0     1   r--      12.3 any cpu"
    assert fmt.vcpu_row("d", 5, off) == \
        "d                                    5     1     -   --p       0.0 any cpu"


def test_sched_credit_layout():
    assert fmt.SCHED_CREDIT_HEADER == "Name                                ID Weight  Cap"
    assert fmt.sched_credit_row({"name": "d", "domid": 2, "cpu_weight": 512, "cpu_cap": 50}) == \
        "d                                    2    512   50"


def test_block_list_layout():
    row = fmt.block_row({"idx": 51713, "backend-id": 0, "handle": 51713, "state": 4, "event-ch": 0,
                         "ring-ref": 0, "be-path": "/local/domain/0/backend/vbd/3/51713"})
    assert row == "51713  0    51713   4      0      0     /local/domain/0/backend/vbd/3/51713  "


def test_sedf_layout():
    assert fmt.SEDF_HEADER == "Name" + " " * 32 + "ID Period(ms) Slice(ms) Lat(ms) Extra Weight"
    row = fmt.sedf_row({"name": "d", "domid": 4, "sedf": {"period": 20.0, "slice": 5.0, "latency": 0.0,
                                                         "extratime": 0, "weight": 256}})
    assert row == "d                                    4      20.0       5.0     0.0      0    256"
