"""A running domain's hot-pluggable devices, one module per class:
:mod:`.block` (``xm block-*``) and :mod:`.net` (``xm network-*``); PCI and
vTPM devices are features of their own (:mod:`pyxen.xend.passthrough`,
:mod:`pyxen.xend.vtpm`).

:class:`Unplugs` is what they share: a guest releases a device in its own
time, and QEMU's DEVICE_DELETED event says when.
"""

from __future__ import annotations

import asyncio


class Unplugs:
    """The devices a domain waits for its guest to release."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Event] = {}

    def expect(self, dev_id: str) -> asyncio.Event:
        """Start waiting for *dev_id* (before asking QEMU to delete it)."""
        ev = self._waiting[dev_id] = asyncio.Event()
        return ev

    def deleted(self, dev_id: str) -> None:
        """QEMU's DEVICE_DELETED for *dev_id*."""
        ev = self._waiting.get(dev_id)
        if ev is not None:
            ev.set()

    def forget(self, dev_id: str) -> None:
        self._waiting.pop(dev_id, None)
