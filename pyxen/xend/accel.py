"""The accelerator verdict for this host: configured, or probed and cached."""

from __future__ import annotations

import asyncio
import logging

from ..config.xendconfig import XendConfig
from ..hypervisor.qemu import accel as qaccel
from .. import storekeys
from ..paths import Paths
from ..store import Store

log = logging.getLogger("pyxen.accel")


class Accelerator:
    def __init__(self, paths: Paths, config: XendConfig, store: Store):
        self.paths = paths
        self.config = config
        self.store = store
        self.detail = ""
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Begin deciding in the background; create and info wait for it."""
        self._task = asyncio.create_task(self._decide())

    async def get(self) -> str:
        if self._task is None:
            self.start()
        return await asyncio.shield(self._task)

    async def _decide(self) -> str:
        mode = self.config["accel"]
        qemu = self.config["qemu-binary"]
        if mode == "tcg":
            self.detail = "configured (accel tcg)"
            return "tcg"
        if mode == "kvm":
            ok, why = qaccel.kvm_usable()
            if not ok:
                log.error("accel kvm configured but %s; domains will fail to start", why)
            self.detail = "configured (accel kvm)"
            return "kvm"
        key = await asyncio.get_running_loop().run_in_executor(None, qaccel.cache_key, qemu)
        cached = self.store.get_json(storekeys.accel_probe(self.store.host))
        if isinstance(cached, dict) and cached.get("key") == key and cached.get("verdict") in ("kvm", "tcg"):
            self.detail = f"probed earlier: {cached.get('detail', '')}"
            return cached["verdict"]
        img = self.paths.default_image
        kernel = img / "vmlinux" if (img / "vmlinux").exists() else img / "vmlinuz"
        ok, detail = await qaccel.probe_kvm(qemu, kernel, img / "initrd.img",
                                            float(self.config["accel-probe-timeout"]))
        verdict = "kvm" if ok else "tcg"
        log.info("accelerator probe: %s (%s)", verdict, detail)
        self.detail = detail
        # A probe that could not run (no image) is not cached: try again next start.
        if ok or "no guest image" not in detail:
            self.store.put_json(storekeys.accel_probe(self.store.host),
                                {"key": key, "verdict": verdict, "detail": detail})
        return verdict
