"""Placement: which cluster host a domain should start on (pure policy).

Given what each host has published about itself (:class:`HostInfo`: its
state, free memory, bridges, and which of the paths asked about it has) and
what a domain needs (:class:`Needs`, from its config: memory, bridges, the
disks and kernel it opens), :func:`choose` picks the host with the most free
memory among those that fit.  Ties go to the host with fewer domains, then
to the name, so that every host computing a placement from the same facts
picks the same one (the failover election relies on that only as an
optimisation; the election key decides).

A refusal (:class:`PlacementError`) lists every host considered and why it
was unfit, one reason per host, in name order, so that ``xm create`` can say
it in one line a person can act on.

Nothing here reads the store, the network or the file system: callers
gather the facts (``pyxen.cluster.failover``, ``evacuate`` and xend's
create handler) and unit tests give them as plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A host takes new domains only in this state; the others say why not.
UP = "up"
STATES = (UP, "down", "fenced", "maintenance", "leaving")


@dataclass(frozen=True)
class HostInfo:
    name: str
    state: str = UP
    address: str = ""
    free_memory: int = 0          # MiB a new domain may use
    vcpus: int = 0                # host CPUs
    domains: int = 0              # running guests (Domain-0 not counted)
    bridges: frozenset = frozenset()
    # Paths this host was asked about that it does not have (disks, kernel,
    # ramdisk).  None: the host was not asked (its paths are unknown), which
    # placement treats as "has them" only when ``assume_paths`` is set.
    missing: frozenset | None = frozenset()
    unknown: str = ""             # with missing None: why the paths are unknown (the host's answer)
    # For xm host-list and migration by name (placement does not use them).
    port: int = 0                 # relocation port
    lease_age: float | None = None    # seconds since its last keep-alive


@dataclass(frozen=True)
class Needs:
    memory: int                   # MiB
    bridges: frozenset = frozenset()
    paths: frozenset = frozenset()    # files and devices the domain opens
    name: str = ""


def needs_of(cfg) -> Needs:
    """What a :class:`pyxen.config.domain.DomainConfig` needs of a host.

    Bridges named by a vif (a vif with none uses the host's default bridge,
    which every host has by construction, so it is no need); every disk's
    target that is a path (an empty CD-ROM has none); kernel and ramdisk."""
    bridges = {v["bridge"] for v in cfg.vifs if v.get("bridge")}
    paths = {d.target for d in cfg.disks if d.target and d.target.startswith("/")}
    for p in (cfg.kernel, cfg.ramdisk):
        if p and p.startswith("/"):
            paths.add(p)
    return Needs(memory=cfg.memory, bridges=frozenset(bridges), paths=frozenset(paths), name=cfg.name)


class PlacementError(Exception):
    """No host fits: ``reasons`` maps each host considered to why not."""

    def __init__(self, what: str, reasons: dict[str, str]):
        self.what, self.reasons = what, dict(reasons)
        if reasons:
            detail = "; ".join(f"{h}: {r}" for h, r in sorted(reasons.items()))
        else:
            detail = "no hosts in the cluster"
        super().__init__(f"no host can run {what}: {detail}")


def unfit(host: HostInfo, needs: Needs) -> str | None:
    """Why *host* cannot run a domain with *needs*, or None if it can."""
    if host.state == "maintenance":
        return "host is in maintenance (xm host-maintenance NAME off ends it)"
    if host.state != UP:
        return f"host is {host.state}"
    if host.free_memory < needs.memory:
        return f"{host.free_memory} MiB free, needs {needs.memory} MiB"
    lacking = sorted(needs.bridges - set(host.bridges))
    if lacking:
        return f"no bridge {', '.join(lacking)}"
    if host.missing is None:
        return host.unknown or "did not report its disks and kernel"
    gone = sorted(set(host.missing) & set(needs.paths))
    if gone:
        return f"no {', '.join(gone)}"
    return None


def rank(hosts: list[HostInfo]) -> list[HostInfo]:
    """Most free memory first; then fewer domains; then by name."""
    return sorted(hosts, key=lambda h: (-h.free_memory, h.domains, h.name))


@dataclass
class Choice:
    host: HostInfo
    # The others considered and why each was unfit (for the log: a choice
    # that skipped a bigger host should say why).
    skipped: dict[str, str] = field(default_factory=dict)


def choose(hosts: list[HostInfo], needs: Needs, *, only: str | None = None,
           exclude: tuple[str, ...] | frozenset = ()) -> Choice:
    """The host to run a domain with *needs* on.

    *only*: the user named the host (``xm create --host``); it must fit, and
    no other is tried.  *exclude*: hosts not to consider at all (the source
    of an evacuation, a host that just failed).  Raises PlacementError."""
    what = f"domain {needs.name}" if needs.name else "the domain"
    if only is not None:
        match = [h for h in hosts if h.name == only]
        if not match:
            known = ", ".join(sorted(h.name for h in hosts)) or "none"
            raise PlacementError(what, {only: f"not a member of the cluster (members: {known})"})
        why = unfit(match[0], needs)
        if why:
            raise PlacementError(what, {only: why})
        return Choice(match[0])
    reasons: dict[str, str] = {}
    for h in rank([h for h in hosts if h.name not in exclude]):
        why = unfit(h, needs)
        if why is None:
            return Choice(h, reasons)
        reasons[h.name] = why
    raise PlacementError(what, reasons)
