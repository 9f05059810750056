"""The lifecycle policy, the state machine and the job rules, unit-tested:
the pure functions directly, and a Domain driven through a fake monitor
and fake services (no QEMU, no network, no host cgroups)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pyxen.config.domain import DomainConfig
from pyxen.config.xendconfig import XendConfig
from pyxen.hypervisor import cgroups
from pyxen.hypervisor.qemu import monitor as qmon
from pyxen.paths import Paths
from pyxen import storekeys
from pyxen.filestore import FileStore
from pyxen.xend import domains as _domains  # noqa: F401  (registers every job kind's recovery)
from pyxen.xend import jobs, lifecycle
from pyxen.xend.domain import Domain
from pyxen.xend.errors import Conflict
from pyxen.xend.lifecycle import Action, State
from pyxen.xend.reservations import Reservations
from pyxen.xend.services import DomainServices


# ------------------------------------------------------------- pure policy
@pytest.mark.parametrize("reason,action,want", [
    ("poweroff", "destroy", Action("destroy")),
    ("poweroff", "restart", Action("restart", reset=True)),
    ("halt", "preserve", Action("preserve")),
    ("reboot", "restart", Action("restart", reset=False)),       # QEMU already reset it
    ("reboot", "destroy", Action("destroy")),
    ("crash", "preserve", Action("preserve")),
    ("crash", "rename-restart", Action("rename-restart")),
    ("crash", "coredump-destroy", Action("destroy", coredump=True)),
    ("crash", "coredump-restart", Action("restart", coredump=True, reset=True)),
])
def test_guest_stopped_maps_every_on_action(reason, action, want):
    assert lifecycle.guest_stopped(reason, action, ran=3600, minimum_restart=60) == want


def test_minimum_restart_time_turns_a_quick_crash_restart_into_destroy():
    a = lifecycle.guest_stopped("crash", "restart", ran=5, minimum_restart=60)
    assert a.kind == "destroy" and "minimum-restart-time" in a.note
    # A coredump-restart still dumps (the dump comes first), then is destroyed.
    a = lifecycle.guest_stopped("crash", "coredump-restart", ran=5, minimum_restart=60)
    assert (a.kind, a.coredump) == ("destroy", False)
    # rename-restart is a restart too.
    assert lifecycle.guest_stopped("crash", "rename-restart", ran=5, minimum_restart=60).kind == "destroy"
    # Only crashes are guarded: a quick reboot or poweroff restarts.
    assert lifecycle.guest_stopped("reboot", "restart", ran=5, minimum_restart=60).kind == "restart"
    assert lifecycle.guest_stopped("poweroff", "restart", ran=5, minimum_restart=60).kind == "restart"
    # Preserve is not a restart: kept whatever the run time.
    assert lifecycle.guest_stopped("crash", "preserve", ran=5, minimum_restart=60).kind == "preserve"


def test_enable_dump_dumps_a_crash_before_its_action_only():
    # xend-config (enable-dump yes): a crashed domain's core first, as Xen did.
    for action, kind in (("restart", "restart"), ("destroy", "destroy"), ("preserve", "preserve")):
        a = lifecycle.guest_stopped("crash", action, ran=3600, minimum_restart=60, enable_dump=True)
        assert (a.kind, a.coredump) == (kind, True)
    for reason in ("poweroff", "halt", "reboot"):
        assert not lifecycle.guest_stopped(reason, "destroy", ran=3600, minimum_restart=60,
                                           enable_dump=True).coredump
    assert not lifecycle.guest_stopped("crash", "destroy", ran=3600, minimum_restart=60).coredump


def test_configured_setting_per_reason():
    args = ("p", "r", "c")
    assert [lifecycle.configured(r, *args) for r in lifecycle.REASONS] == ["p", "p", "r", "c"]
    assert [lifecycle.setting_name(r) for r in lifecycle.REASONS] == \
        ["on_poweroff", "on_poweroff", "on_reboot", "on_crash"]
    assert lifecycle.preserved_state("crash") == State.CRASHED
    assert lifecycle.preserved_state("poweroff") == State.SHUTDOWN


@pytest.mark.parametrize("on_crash,ran,kind", [
    ("restart", 3600, "restart"), ("restart", 5, "destroy"), ("rename-restart", 3600, "restart"),
    ("coredump-restart", 3600, "restart"), ("preserve", 5, "preserve"), ("destroy", 3600, "destroy"),
    ("coredump-destroy", 3600, "destroy"),
])
def test_qemu_died_policy(on_crash, ran, kind):
    assert lifecycle.qemu_died(on_crash, ran, 60).kind == kind


def test_guest_events_mean_stop_reasons():
    ge = lifecycle.guest_event
    assert ge("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}, False) == "poweroff"
    assert ge("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}, True) == "halt"
    assert ge("SHUTDOWN", {"guest": True, "reason": "guest-reset"}, False) == "reboot"
    assert ge("SHUTDOWN", {"guest": True, "reason": "guest-panic"}, True) == "crash"
    assert ge("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}, False) is None
    assert ge("GUEST_PANICKED", {}, False) == "crash"
    assert ge("STOP", {}, False) is None
    assert lifecycle.reboot_in_place("restart") and lifecycle.reboot_in_place("coredump-restart")
    assert not lifecycle.reboot_in_place("destroy")


# ---------------------------------------------------------- state machine
@pytest.mark.parametrize("old,new", [
    ("creating", "running"), ("creating", "incoming"), ("creating", "dying"), ("incoming", "running"),
    ("incoming", "dying"), ("running", "shutdown"), ("running", "crashed"), ("running", "dying"),
    ("running", "creating"), ("shutdown", "crashed"), ("shutdown", "dying"), ("crashed", "creating"),
    ("dying", "dying"), ("running", "running"),
])
def test_legal_transitions(old, new):
    assert lifecycle.check_transition(State(old), new) == State(new)


@pytest.mark.parametrize("old,new", [
    ("dying", "running"), ("dying", "creating"), ("incoming", "shutdown"), ("creating", "crashed"),
    ("shutdown", "running"), ("crashed", "incoming"), ("running", "incoming"),
])
def test_illegal_transitions_are_refused(old, new):
    with pytest.raises(lifecycle.IllegalTransition, match=f"from {old} to {new}"):
        lifecycle.check_transition(State(old), new)


def test_stored_state_and_values():
    assert lifecycle.stored_state("crashed") == State.CRASHED
    assert lifecycle.stored_state("bogus") == State.RUNNING
    assert State.RUNNING == "running" and str(State.INCOMING) == "incoming"
    # Every state has its row in the table.
    assert set(lifecycle.TRANSITIONS) == set(State)


# ----------------------------------------------------------------- jobs
def test_job_rules():
    save = jobs.Job("save", "saving", file="/f")
    assert (save.kind, save.phase, save["file"]) == ("save", "saving", "/f")
    for op in ("pause", "unpause", "shutdown", "destroy", "save", "migrate", "block-attach",
               "network-detach", "vcpu-set", "mem-set", "vcpu-pin", "sched-credit", "sysrq", "dump-core",
               "pci-attach"):
        assert not jobs.may_run_beside(save, op), op
        with pytest.raises(Conflict, match="Domain d is busy: save in progress"):
            jobs.refuse_beside(save, op, "d")
    for op in ("domain", "domains", "vcpus", "rename", "mem-max", "sched-sedf", "qemu-monitor"):
        assert jobs.may_run_beside(save, op)
        jobs.refuse_beside(save, op, "d")
    mig = jobs.Job("migrate", "stream")
    assert not jobs.may_run_beside(mig, "save") and jobs.may_run_beside(mig, "domain")
    assert jobs.may_run_beside(None, "destroy")
    with pytest.raises(ValueError):
        jobs.Job("snapshot", "x")


def test_job_records_round_trip():
    rec = dict(jobs.Job("migrate", "commit", target="h:8002"))
    job = jobs.Job.from_record(rec)
    assert isinstance(job, jobs.Job) and job.kind == "migrate" and job.phase == "commit" and job == rec
    assert jobs.Job.from_record(None) is None and jobs.Job.from_record({}) is None
    assert jobs.Job.from_record("junk") is None


def test_recovery_is_looked_up_by_kind():
    from pyxen.xend import migration, saving
    assert jobs.recovery_for({"op": "save"}) is saving.recover_save
    assert jobs.recovery_for({"op": "migrate"}) is migration.recover
    assert jobs.recovery_for({"op": "defrag"}) is None


# ------------------------------------------------------- a fake hypervisor
class FakeSession:
    """Stands in for QmpSession: records commands, answers from a table."""

    def __init__(self, answers: dict | None = None):
        self.calls: list[tuple[str, dict | None]] = []
        self.answers = answers or {}
        self.fds: list[int] = []

    async def execute(self, cmd, args=None, timeout=15.0):
        self.calls.append((cmd, args))
        a = self.answers.get(cmd, {})
        if isinstance(a, BaseException):
            raise a
        return a() if callable(a) else a

    def send_fd_scm(self, fd):
        self.fds.append(fd)

    async def connect(self, path):
        pass

    async def close(self):
        pass


def fake_monitor(answers: dict | None = None) -> qmon.Monitor:
    mon = qmon.Monitor("fake")
    mon.session = FakeSession(answers)
    return mon


class FakeNet:
    def vif_name(self, domid, devid, spec):
        return f"vif{domid}.{devid}"

    async def vif_down(self, dom, devid, spec):
        pass


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "remove", lambda uuid: None)
    monkeypatch.setattr(cgroups, "apply", lambda *a, **k: None)
    events: list[tuple[str, str]] = []
    created: list[DomainConfig] = []
    removed: list = []

    async def create(cfg):
        created.append(cfg)

    paths = Paths(tmp_path)
    services = DomainServices(
        store=FileStore(tmp_path / "store"), paths=paths,
        config=XendConfig({"minimum-restart-time": 60}), net=FakeNet(),
        reservations=Reservations(lambda: []), emit=lambda kind, dom, **kw: events.append((kind, dom.name)),
        remove=removed.append, create=create, count_migration=lambda *a: None)

    def make(**values) -> tuple[Domain, qmon.Monitor]:
        cfg = DomainConfig.from_values({"name": "fd", "kernel": "/k", "memory": 64, **values})
        dom = Domain(services, cfg, 7)
        dom.state = State.RUNNING
        dom.start_time -= 3600          # long enough for any restart
        dom.monitor = fake_monitor()
        dom.announce()
        return dom, dom.monitor

    return make, events, created, removed, services


def cmds(mon) -> list[str]:
    return [c for c, _ in mon.session.calls]


def run(coro):
    return asyncio.run(coro)


def test_poweroff_preserve_keeps_the_domain_shut_down(env):
    make, events, _, removed, services = env
    dom, mon = make(on_poweroff="preserve")
    run(dom.guest_exited("poweroff"))
    assert dom.state == State.SHUTDOWN and dom.halted.is_set() and not removed
    assert services.store.get_json(storekeys.runtime(services.store.host, dom.uuid))["state"] == "shutdown"
    assert ("changed", "fd") in events
    assert cmds(mon) == []


def test_crash_restart_resets_and_runs_again(env):
    make, *_ = env
    dom, mon = make(on_crash="restart")
    run(dom.guest_exited("crash"))
    assert cmds(mon) == ["system_reset", "cont"]
    assert dom.state == State.RUNNING and dom.shutdown_reason is None and not dom.paused


def test_reboot_restart_does_not_reset_twice(env):
    make, *_ = env
    dom, mon = make(on_reboot="restart")
    run(dom.guest_exited("reboot"))
    assert cmds(mon) == ["cont"]


def test_quick_crash_with_restart_is_destroyed(env):
    make, events, _, removed, services = env
    dom, mon = make(on_crash="restart")
    dom.start_time = dom.start_time + 3600 - 1       # ran for a second
    run(dom.guest_exited("crash"))
    assert dom.gone.is_set() and removed == [dom] and ("destroyed", "fd") in events
    assert dom.monitor is None and "cont" not in cmds(mon)     # released, not resumed
    assert services.store.get_json(storekeys.runtime(services.store.host, dom.uuid)) is None


def test_rename_restart_keeps_the_corpse_and_starts_a_successor(env):
    make, _, created, _, _ = env
    dom, _ = make(on_crash="rename-restart")
    uuid = dom.uuid

    async def go():
        await dom.guest_exited("crash")
        await asyncio.sleep(0)          # the successor's create task runs
    run(go())
    assert dom.name == f"Domain-{uuid}" and dom.state == State.CRASHED
    assert len(created) == 1 and created[0].name == "fd" and created[0].uuid != uuid


def test_coredump_destroy_dumps_then_destroys(env, monkeypatch):
    make, _, _, removed, _ = env
    dom, mon = make(on_crash="coredump-destroy")
    run(dom.guest_exited("crash"))
    c = cmds(mon)
    assert c.index("stop") < c.index("getfd") < c.index("dump-guest-memory")
    assert removed == [dom] and dom.monitor is None
    assert list(dom.paths.dump_dir.glob("*-fd.7.core"))


def test_preserved_domain_may_not_go_back_to_running(env):
    make, *_ = env
    dom, _ = make(on_poweroff="preserve")
    run(dom.guest_exited("poweroff"))
    with pytest.raises(lifecycle.IllegalTransition):
        dom.state = State.RUNNING
    assert dom.state == State.SHUTDOWN


def test_operations_are_refused_beside_a_job(env):
    make, *_ = env
    dom, mon = make()
    dom.job = jobs.Job("save", "saving")
    for call in (dom.pause(), dom.unpause(), dom.shutdown("poweroff"), dom.destroy(),
                 dom.save("/tmp/x"), dom.sysrq("s"), dom.vcpu_pin("0", "0")):
        with pytest.raises(Conflict, match="busy: save in progress"):
            run(call)
    assert cmds(mon) == []
    run(dom.rename("renamed"))          # a config-only change waits for the lock instead
    assert dom.name == "renamed"


def test_recover_job_dispatches_by_kind(env, monkeypatch):
    make, *_ = env
    dom, _ = make()
    seen = []

    async def fake(d, job):
        seen.append((d, job.kind))
    monkeypatch.setitem(jobs.RECOVERY, "save", fake)
    dom.job = jobs.Job("save", "saving")
    run(dom.recover_job())
    assert seen == [(dom, "save")]
    dom.job = {"op": "defrag"}
    run(dom.recover_job())
    assert dom.job is None and seen == [(dom, "save")]


# ------------------------------------------------------------- the monitor
def test_monitor_never_logs_the_vnc_password(caplog):
    mon = fake_monitor()
    with caplog.at_level(logging.DEBUG, logger="pyxen.qmp"):
        run(mon.set_vnc_password("s3cr3tpw", "vnc0"))
    assert mon.session.calls == [("set_password", {"protocol": "vnc", "password": "s3cr3tpw",
                                                   "display": "vnc0"})]
    assert "set_password" in caplog.text and "s3cr3tpw" not in caplog.text


def test_typed_commands_send_what_qemu_expects():
    mon = fake_monitor({"query-cpus-fast": [{"cpu-index": 1, "thread-id": 11}, {"cpu-index": 0, "thread-id": 10}],
                        "query-version": {"qemu": {"major": 7, "minor": 2, "micro": 1}},
                        "qom-get": "pc-i440fx-7.2-machine", "add-fd": {"fdset-id": 3}})

    async def go():
        assert await mon.vcpu_threads() == [10, 11]
        assert await mon.version() == "7.2.1"
        assert await mon.machine_type() == "pc-i440fx-7.2"
        assert await mon.add_fd(5, "pyxen-disk:xvda") == 3
        await mon.balloon(64)
        await mon.send_keys("ctrl", "alt", "delete")
        await mon.migration.enable_events(auto_converge=True)
        await mon.migrate_set_parameters(max_bandwidth=1, downtime_limit=50)
    run(go())
    calls = dict(mon.session.calls)
    assert calls["balloon"] == {"value": 64 << 20}
    assert [k["data"] for k in calls["send-key"]["keys"]] == ["ctrl", "alt", "delete"]
    assert calls["migrate-set-capabilities"]["capabilities"] == [
        {"capability": "events", "state": True}, {"capability": "auto-converge", "state": True}]
    assert calls["migrate-set-parameters"] == {"max-bandwidth": 1, "downtime-limit": 50}
    assert mon.session.fds == [5]


def test_migration_stream_completes_from_events():
    mon = fake_monitor()

    async def go():
        await mon.migration.start_out("pyxen-save")
        asyncio.get_running_loop().call_later(0.01, mon.migration.note, "completed")
        return await mon.migration.wait_done(5, tick=5, poll=False)
    assert run(go()) == "completed"
    assert mon.session.calls[0] == ("migrate", {"uri": "fd:pyxen-save"})


def test_migration_stream_polls_when_an_event_goes_missing():
    mon = fake_monitor({"query-migrate": {"status": "failed", "error-desc": "No space left on device"}})

    async def go():
        await mon.migration.start_in("pyxen-restore")
        st = await mon.migration.wait_done(5, tick=0.01, poll=True)
        return st, await mon.migration.error(st)
    assert run(go()) == ("failed", "No space left on device")


def test_migration_stream_gives_up_on_check_or_deadline():
    mon = fake_monitor({"query-migrate": {"status": "active"}})
    assert run(mon.migration.wait_done(5, tick=0.01, check=lambda: False)) is None
    assert run(mon.migration.wait_done(0.05, tick=0.01)) is None


def test_cancel_waits_until_the_stream_has_ended():
    states = iter(["cancelling", "cancelling", "cancelled"])
    mon = fake_monitor({"query-migrate": lambda: {"status": next(states)}})
    run(mon.migration.cancel(lambda: True))
    assert cmds(mon) == ["migrate_cancel", "query-migrate", "query-migrate", "query-migrate"]


# --------------------------------------------- the machine a domain booted on
class FakeControl:
    def __init__(self):
        self.lines: list[str] = []

    async def request(self, line, timeout=10.0):
        self.lines.append(line)
        return "ok"


def test_vcpu_set_changes_the_online_count_never_the_maximum(env):
    make, *_ = env
    dom, _ = make(vcpus=2)
    dom.control = FakeControl()
    run(dom.vcpu_set(1))
    assert (dom.cfg.vcpus, dom.cfg.maxvcpus) == (1, 2)
    run(dom.vcpu_set(2))                 # still allowed: the maximum is the boot's
    assert dom.control.lines == ["cpu 1 offline", "cpu 1 online"] and dom.cfg.vcpus == 2


def test_booted_config_describes_the_machine_qemu_runs(env, monkeypatch):
    from pyxen.xend import resources
    make, *_ = env
    dom, _ = make(vcpus=1, memory=96)
    dom.pid = 4242
    monkeypatch.setattr(resources.process, "cmdline", lambda pid: ["qemu", "-m", "128M", "-smp", "2"])
    c = dom.booted_config()
    assert (c.vcpus, c.maxvcpus, c.memory, c.maxmem) == (1, 2, 96, 128)
    assert (dom.cfg.maxvcpus, dom.cfg.maxmem) == (None, None)        # the live config is left alone


def test_a_save_that_could_not_be_restored_keeps_the_domain(env, monkeypatch, tmp_path):
    from pyxen.xend import resources
    from pyxen.xend.errors import XendError
    make, _, _, removed, _ = env
    dom, mon = make(vcpus=2)
    dom.pid = 4242
    # QEMU runs fewer vCPUs than the config has online: no config rebuilds it.
    monkeypatch.setattr(resources.process, "cmdline", lambda pid: ["qemu", "-m", "128M", "-smp", "1"])
    saves = tmp_path / "saves"
    saves.mkdir()
    with pytest.raises(XendError, match="could not be restored"):
        run(dom.save(str(saves / "f.save")))
    assert not removed and dom.state == State.RUNNING and dom.job is None
    assert list(saves.iterdir()) == [] and cmds(mon) == []
