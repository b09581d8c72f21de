"""Which devices are online, backed by ``devices.online`` and ``last_seen_at``.

A device is online from the moment it authenticates. It goes offline when
nothing was heard from it for ``offline_after_s``, not when its connection
drops: cameras on flaky Wi-Fi reconnect within seconds and should not flap.
Each change is announced as a ``device`` event with ``status``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from hub import repository
from hub.database import Database
from hub.events import EventBus
from hub.ingest import DeviceRecord
from hub.repository import DeviceState

logger = logging.getLogger(__name__)

TOUCH_INTERVAL_S = 10.0
"""Contact with a device is written at most this often (health, pings)."""


class Presence:
    """The hub's :class:`hub.ingest.DeviceDirectory`, plus the offline watcher."""

    def __init__(
        self,
        database: Database,
        bus: EventBus,
        offline_after_s: float,
        connected_ids: Callable[[], Collection[str]],
    ) -> None:
        self.database = database
        self.bus = bus
        self.offline_after_s = offline_after_s
        self.connected_ids = connected_ids
        self.health: dict[str, dict[str, Any]] = {}
        self._touched_s: dict[str, float] = {}

    async def find(self, device_id: str) -> DeviceRecord | None:
        return await self.database.run(repository.find_device, device_id)

    async def connected(self, device: DeviceRecord) -> None:
        state = await self.database.run(repository.set_online, device.device_id, True)
        self._touched_s[device.device_id] = time.monotonic()
        if state is not None:
            await self._announce(state)

    async def disconnected(self, device: DeviceRecord) -> None:
        self._touched_s.pop(device.device_id, None)

    async def heard_from(
        self, device: DeviceRecord, health: Mapping[str, Any] | None
    ) -> None:
        if health is not None:
            self.health[device.device_id] = {
                k: v for k, v in health.items() if k != "type"
            }
        now_s = time.monotonic()
        if now_s - self._touched_s.get(device.device_id, 0.0) < TOUCH_INTERVAL_S:
            return
        self._touched_s[device.device_id] = now_s
        await self.database.run(repository.touch_devices, [device.device_id])

    async def watch_forever(self) -> None:
        """Mark silent devices offline, and keep connected ones fresh."""
        interval_s = min(self.offline_after_s / 3.0, TOUCH_INTERVAL_S)
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.watch_once()
            except Exception:
                logger.exception("device presence round failed")

    async def watch_once(self) -> list[DeviceState]:
        connected = sorted(self.connected_ids())
        if connected:
            await self.database.run(repository.touch_devices, connected)
        gone = await self.database.run(
            repository.mark_stale_offline, self.offline_after_s
        )
        for state in gone:
            logger.info("device %s is offline", state.device_id)
            await self._announce(state)
        return gone

    async def _announce(self, state: DeviceState) -> None:
        await self.bus.emit(
            "device",
            farm_id=state.farm_id,
            coop_id=state.coop_id,
            device_id=state.device_id,
            status="online" if state.online else "offline",
        )
