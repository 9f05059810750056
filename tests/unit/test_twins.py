"""Migration to the same host (xend/twins.py) without QEMU: which domain
the registry lists, what each copy writes to the store before and after
the commit, what an xend restart does with an arrival left behind, the
loopback destination and the protocol's migration id.  The end-to-end
tests with real guests are tests/system/test_migrate_localhost.py."""

from __future__ import annotations

import asyncio

import pytest

from pyxen import storekeys
from pyxen.config.domain import DomainConfig
from pyxen.config.xendconfig import XendConfig
from pyxen.filestore import FileStore
from pyxen.paths import Paths
from pyxen.xend import jobs, twins
from pyxen.xend import relocproto as rp
from pyxen.xend.domain import Domain
from pyxen.xend.domains import Domains
from pyxen.xend.errors import Conflict
from pyxen.xend.network import HostNetwork

MID = "0123456789abcdef"


def registry(root) -> Domains:
    paths = Paths(root)
    for d in paths.layout():
        d.mkdir(parents=True, exist_ok=True)
    xc, st = XendConfig(), FileStore(paths.state, host="h")
    return Domains(paths, xc, st, None, HostNetwork(paths, xc, st))


def config() -> DomainConfig:
    # /bin/sh stands for a kernel: the checks only look that it is a readable file.
    return DomainConfig.from_values({"name": "web", "kernel": "/bin/sh", "memory": 32})


def migrating_source(doms: Domains) -> Domain:
    src = Domain(doms.services(), config(), 3)
    src.state = "running"
    src.job = jobs.Job("migrate", "stream", target="localhost:8002", resume=True, id=MID)
    doms.by_uuid[src.uuid] = src
    src.persist(config=True)
    return src


def arriving_twin(doms: Domains, src: Domain) -> Domain:
    twin = Domain(doms.services(), DomainConfig.from_sxp(src.cfg.to_sxp()), 4)
    twin.state = "incoming"
    twins.prepare(twin, src)
    doms.shadows.append(twin)
    twin.persist(config=True)
    return twin


def test_only_the_migration_of_this_host_finds_its_source(tmp_path):
    doms = registry(tmp_path)
    src = migrating_source(doms)
    assert doms.same_host_source(src.uuid, MID) is src
    assert doms.same_host_source(src.uuid, "f" * 16) is None       # another host's migration
    assert doms.same_host_source(src.uuid, "") is None
    src.job = None
    assert doms.same_host_source(src.uuid, MID) is None


def test_the_twin_passes_the_checks_its_source_fails(tmp_path):
    doms = registry(tmp_path)
    src = migrating_source(doms)
    doms._validate(DomainConfig.from_sxp(src.cfg.to_sxp()), src)         # same name and uuid: its twin
    with pytest.raises(Conflict, match="already exists"):
        doms._validate(DomainConfig.from_sxp(src.cfg.to_sxp()))
    vtpm = DomainConfig.from_values({"name": "web", "kernel": "/bin/sh", "memory": 32, "vtpm": ["instance=1"]})
    with pytest.raises(Conflict, match="vTPM"):
        twins.refuse_unsupported(vtpm, False)
    with pytest.raises(Conflict, match="--copy-storage"):
        twins.refuse_unsupported(config(), True)


def test_before_the_commit_the_source_is_the_domain_and_its_record_stays(tmp_path):
    doms = registry(tmp_path)
    src = migrating_source(doms)
    st = doms.store
    runtime_rev, config_rev = st.revision(storekeys.runtime("h", src.uuid)), st.revision(storekeys.config(src.uuid))
    twin = arriving_twin(doms, src)
    assert st.revision(storekeys.runtime("h", src.uuid)) == runtime_rev
    assert st.revision(storekeys.config(src.uuid)) == config_rev
    rec = st.get_json(storekeys.incoming("h", src.uuid))
    assert rec["domid"] == 4 and rec["state"] == "incoming" and "(name web)" in rec["config"]
    assert doms.all() == [src] and doms.lookup("web") is src and doms.lookup(src.uuid) is src
    assert twin in doms.everyone() and twin.sedf == src.sedf
    assert doms._alloc_domid() == 5                   # the twin's id is taken too
    # A failed arrival drops only what is its own.
    twin.forget()
    assert st.get(storekeys.incoming("h", src.uuid)) is None
    assert st.revision(storekeys.runtime("h", src.uuid)) == runtime_rev


def test_the_commit_is_one_step_and_the_superseded_source_writes_nothing(tmp_path):
    doms = registry(tmp_path)
    src = migrating_source(doms)
    st = doms.store
    twin = arriving_twin(doms, src)
    src.pid = 1234
    twin.state = "running"
    assert twins.commit(doms, twin) is src
    rec = st.get_json(storekeys.runtime("h", src.uuid))
    assert rec["domid"] == 4 and rec["state"] == "running" and rec["replaces"]["domid"] == 3
    assert rec["replaces"]["pid"] == 1234 and rec["job"] is None
    assert st.get(storekeys.incoming("h", src.uuid)) is None
    assert doms.all() == [twin] and doms.lookup("web") is twin and src in doms.shadows
    assert src.superseded and not twin.twin
    rev = st.revision(storekeys.runtime("h", src.uuid))
    src.persist()
    src.forget()
    assert st.revision(storekeys.runtime("h", src.uuid)) == rev and st.get(storekeys.config(src.uuid))
    # The old copy gone: the record stops naming it.
    doms.remove(src)
    assert doms.everyone() == [twin] and "replaces" not in st.get_json(storekeys.runtime("h", src.uuid))


def test_a_restart_drops_an_arrival_left_before_its_commit(tmp_path):
    doms = registry(tmp_path)
    src = migrating_source(doms)
    arriving_twin(doms, src)
    st = doms.store
    runtime = st.get(storekeys.runtime("h", src.uuid))
    after = registry(tmp_path)
    asyncio.run(twins.roll_back_arrivals(after))
    assert st.get(storekeys.incoming("h", src.uuid)) is None
    assert st.get(storekeys.runtime("h", src.uuid)) == runtime and st.get(storekeys.config(src.uuid))
    assert after.shadows == [] and after.by_uuid == {}


def test_the_recovery_of_a_same_host_commit_is_a_roll_back(tmp_path):
    """Its record still the source's at a restart, the twin never committed."""
    from pyxen.xend import migration
    doms = registry(tmp_path)
    src = migrating_source(doms)
    resumed = []

    async def cancel_outgoing(resume):
        resumed.append(resume)
        return True
    src.cancel_outgoing = cancel_outgoing
    src.monitor, src.pid = object(), 99
    asyncio.run(migration.recover(src, {"op": "migrate", "phase": "commit", "local": True, "resume": True}))
    assert resumed == [True] and not src.paused and src.job is None


def test_keys_of_the_pair_do_not_mix():
    inc, run = storekeys.incoming("h", "u"), storekeys.runtime("h", "u")
    assert inc.startswith(storekeys.runtime_prefix("h")) and inc != run
    assert storekeys.uuid_of_incoming("h", inc) == "u" and storekeys.uuid_of_runtime("h", inc) is None
    assert storekeys.uuid_of_incoming("h", run) is None


def test_loopback_destinations(tmp_path):
    assert twins.is_loopback("localhost") and twins.is_loopback("127.0.0.2")
    assert not twins.is_loopback("192.0.2.7") and not twins.is_loopback("no-such-host.invalid")
    assert twins.loopback("192.0.2.7", "", lambda: None, tmp_path / "c.pem") is None
    # Plaintext: only where this xend's server listens.
    assert twins.loopback("localhost", "10.0.0.1", lambda: None, tmp_path / "c.pem") == \
        twins.Loopback("10.0.0.1", None, None)
    assert twins.loopback("127.0.0.1", "0.0.0.0", lambda: None, tmp_path / "c.pem").listen is None
    # TLS: no name check, but this host's own certificate only.
    from pyxen import pki
    pki.make_ca(tmp_path)
    pki.make_host_cert(tmp_path, "hosta", ["192.0.2.1"])
    files = pki.TlsFiles.for_host(tmp_path.parent / "none", str(tmp_path / pki.HOST_CERT),
                                  str(tmp_path / pki.HOST_KEY), str(tmp_path / pki.CA_CERT))
    here = twins.loopback("localhost", "", files.client_context, files.cert)
    assert here.ctx.check_hostname is False and here.own[:1] == b"\x30"     # DER: a SEQUENCE


def test_the_migration_id_travels_and_is_checked():
    req = rp.Receive(config=["vm", ["name", "web"]], accel="tcg", machine="pc-i440fx-7.2", qemu="7.2.0",
                     live=True, host="h", migration_id=MID)
    assert rp.parse_receive(req.to_msg()).migration_id == MID
    req.migration_id = ""
    assert rp.parse_receive(req.to_msg()).migration_id == ""
    bad = req.to_msg() + [["id", "not hex!"]]
    with pytest.raises(rp.ProtocolError, match="bad migration id"):
        rp.parse_receive(bad)


def test_a_restart_after_the_commit_removes_the_replaced_copy(tmp_path):
    doms = registry(tmp_path)
    src = migrating_source(doms)
    twin = arriving_twin(doms, src)
    twin.state = "running"
    twins.commit(doms, twin)
    st = doms.store
    old_run = doms.paths.domain_run(3)
    old_run.mkdir(parents=True)
    (old_run / "qemu.pid").write_text("999999\n")
    after = registry(tmp_path)
    rec = st.get_json(storekeys.runtime("h", src.uuid))
    dom = after.from_record(DomainConfig.from_sxp(st.get(storekeys.config(src.uuid)).decode()), rec["domid"], rec)
    assert dom.replaces["domid"] == 3
    rev = st.revision(storekeys.runtime("h", src.uuid))
    asyncio.run(twins.drop_replaced(after, dom))
    assert not old_run.exists()                                   # the old copy's run dir went
    assert st.revision(storekeys.runtime("h", src.uuid)) == rev  # and it wrote nothing
    after.by_uuid[dom.uuid] = dom
    asyncio.run(twins.resume_arrived(dom, want_paused=False))
    assert "replaces" not in st.get_json(storekeys.runtime("h", src.uuid))
