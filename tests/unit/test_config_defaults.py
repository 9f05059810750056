"""Domain-config defaults are written once, in the options table
(pyxen/config/options.py): DomainConfig's fields and from_values read them."""

from __future__ import annotations

import dataclasses

from pyxen.config import options
from pyxen.config.domain import DomainConfig

# DomainConfig field -> options variable
FIELDS = {"builder": "builder", "memory": "memory", "maxmem": "maxmem", "vcpus": "vcpus",
          "maxvcpus": "maxvcpus", "cpus": "cpus", "cpu_weight": "cpu_weight", "cpu_cap": "cpu_cap",
          "on_poweroff": "on_poweroff", "on_reboot": "on_reboot", "on_crash": "on_crash",
          "on_watchdog": "on_watchdog", "kernel": "kernel", "ramdisk": "ramdisk", "root": "root",
          "extra": "extra", "cmdline": "cmdline", "ip": "ip", "console_port": "console",
          "description": "description"}


def _expect(var: str):
    v = options.BY_NAME[var]
    return "" if v.default is None and v.kind == "str" and var != "cmdline" else v.default


def test_field_defaults_are_the_option_defaults():
    defaults = {f.name: f.default for f in dataclasses.fields(DomainConfig)}
    for field, var in FIELDS.items():
        assert defaults[field] == _expect(var), field


def test_an_unset_variable_gets_the_option_default():
    cfg = DomainConfig.from_values({"name": "d", "kernel": "/k"})
    for field, var in FIELDS.items():
        if field != "kernel":
            assert getattr(cfg, field) == _expect(var), field


def test_changing_the_table_changes_both(monkeypatch):
    # One source: a different default in the table is what an unset variable gets.
    monkeypatch.setitem(options.BY_NAME, "memory", dataclasses.replace(options.BY_NAME["memory"], default=77))
    monkeypatch.setitem(options.BY_NAME, "on_crash", dataclasses.replace(options.BY_NAME["on_crash"],
                                                                         default="preserve"))
    cfg = DomainConfig.from_values({"name": "d", "kernel": "/k"})
    assert cfg.memory == 77 and cfg.on_crash == "preserve"
