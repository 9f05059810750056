"""Evacuating a host for maintenance: where each of its domains goes.

:func:`plan` is the pure part of ``xm host-evacuate NAME``: for every
domain on the host, in order of size (largest first, so the big ones get
the roomy hosts), placement picks a target among the other hosts that are
up, and the memory it takes is subtracted from that target before the next
domain is placed, so two domains never both count the same free memory.  A
domain that cannot go live (PCI passthrough, a job already in flight, not
running) or that fits nowhere is refused with its reason; the rest are
moved by xend's live migration, one at a time (each migration already uses
the host's bandwidth and a CPU for the pre-copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .placement import HostInfo, Needs, PlacementError, choose


@dataclass(frozen=True)
class Candidate:
    name: str
    needs: Needs
    # Why it cannot be live-migrated at all ("" when it can).
    blocker: str = ""


@dataclass
class Plan:
    moves: list[tuple[str, str]] = field(default_factory=list)    # (domain, target host)
    refused: dict[str, str] = field(default_factory=dict)         # domain -> why it stays

    def summary(self) -> str:
        lines = [f"{d} -> {h}" for d, h in self.moves]
        lines += [f"{d}: stays ({why})" for d, why in sorted(self.refused.items())]
        return "\n".join(lines)


def plan(hosts: list[HostInfo], source: str, domains: list[Candidate]) -> Plan:
    out = Plan()
    pool = {h.name: h for h in hosts if h.name != source}
    for c in sorted(domains, key=lambda c: (-c.needs.memory, c.name)):
        if c.blocker:
            out.refused[c.name] = c.blocker
            continue
        try:
            target = choose(list(pool.values()), c.needs).host
        except PlacementError as e:
            out.refused[c.name] = str(e)
            continue
        out.moves.append((c.name, target.name))
        pool[target.name] = replace(target, free_memory=target.free_memory - c.needs.memory,
                                    domains=target.domains + 1)
    return out
