"""The features every domain runs through its hooks (hooks.py), in order,
and the calls that run one step of every feature."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .firmware import HvmFeature
from .hooks import Feature, FeatureContext
from .passthrough import PciFeature
from .vtpm import VtpmFeature

if TYPE_CHECKING:
    from ..config.domain import DomainConfig
    from ..hypervisor.qemu.argv import Runtime

# HVM first: its firmware check and variable file come before anything else.
FEATURES: tuple[Feature, ...] = (HvmFeature(), PciFeature(), VtpmFeature())


def check(cfg: "DomainConfig", others: Iterable[Any]) -> None:
    others = list(others)
    for f in FEATURES:
        f.check(cfg, others)


def check_restore(cfg: "DomainConfig", meta: dict, what: str) -> None:
    for f in FEATURES:
        f.check_restore(cfg, meta, what)


async def before_start(ctx: FeatureContext, rt: "Runtime") -> None:
    for f in FEATURES:
        await f.before_start(ctx, rt)


async def after_start(ctx: FeatureContext) -> None:
    for f in FEATURES:
        await f.after_start(ctx)


async def adopt(ctx: FeatureContext) -> None:
    for f in FEATURES:
        await f.adopt(ctx)


async def release(ctx: FeatureContext) -> None:
    for f in FEATURES:
        await f.release(ctx)


def save_meta(ctx: FeatureContext) -> dict:
    meta: dict = {}
    for f in FEATURES:
        meta.update(f.save_meta(ctx))
    return meta
