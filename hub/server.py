"""One hub process: ingest, API, event relay, re-dispatch and presence.

:class:`Hub` builds every part from :class:`farmeye.config.Settings` and two
URLs, starts them in order and stops them in reverse: stop taking uploads and
let those in progress reach their ack, close the event streams, stop the
background loops, then the pools and connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import ssl
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

from farmeye.config import Settings
from farmeye.events import EVENTS_CHANNEL
from hub import repository
from hub.alerts import AlertRule, AlertRules
from hub.api import Api, ApiContext
from hub.database import Database
from hub.dispatch import PENDING_GRACE_S, Dispatcher
from hub.events import EventBus
from hub.http import HttpServer
from hub.ingest import IngestLimits, IngestServer
from hub.metrics import HubMetrics
from hub.presence import Presence
from hub.retention import Retention
from hub.store import DiskImageStore, StoreError
from hub.stream import REPLAY_MAX_EVENTS, EventStream, StreamFilter
from hub.triage_pool import TriagePool
from hub.uploads import UploadPipeline
from hub.users import Users

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 2.0
"""Time each dependency has to answer ``GET /healthz``."""


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context of the ingest port, when TLS is configured."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


class Hub:
    """Every part of a hub, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        redis_url: str,
        *,
        admin_user_ids: frozenset[int] = frozenset(),
        alert_rule: AlertRule | None = None,
        events_channel: str = EVENTS_CHANNEL,
        redispatch_interval_s: float = 5.0,
        pending_grace_s: float = PENDING_GRACE_S,
    ) -> None:
        self.settings = settings
        self.metrics = HubMetrics()
        self.database = Database(database_url)
        self.store = DiskImageStore(
            Path(settings.data_dir), min_free_bytes=settings.min_free_bytes
        )
        self.triage = TriagePool(settings.triage_processes)
        self.metrics.disk_free_bytes.set_function(self._disk_free_bytes)
        self.retention = Retention(
            self.database,
            self.store,
            settings.photo_retention_days,
            self.metrics.photos_deleted,
        )
        self.users = Users(self.database, admin_user_ids)
        self.stream = EventStream(self.users.viewer, self._replay)
        self.bus = EventBus(redis_url, self.stream, self.metrics, events_channel)
        self.dispatcher = Dispatcher(
            redis_url,
            self.database,
            self.store,
            self.metrics,
            settings.queue_bound,
            redispatch_interval_s,
            pending_grace_s,
        )
        self.uploads = UploadPipeline(
            self.store,
            self.database,
            self.triage,
            self.dispatcher,
            self.bus,
            self.metrics,
        )
        self.presence = Presence(
            self.database,
            self.bus,
            settings.device_offline_after_s,
            lambda: list(self.ingest.sessions),
        )
        self.ingest = IngestServer(
            self.presence,
            self.uploads,
            self.metrics,
            _limits(settings),
            tls_context(settings),
        )
        self.alerts = AlertRules(
            self.database, self.bus, self.metrics, alert_rule or AlertRule()
        )
        self.bus.listeners.append(self.alerts.on_event)
        self.api = Api(self._api_context())
        self.http = HttpServer(self.api.router())
        self.ingest_address: tuple[str, int] | None = None
        self.http_address: tuple[str, int] | None = None
        self._background: list[asyncio.Task[None]] = []

    def _api_context(self) -> ApiContext:
        return ApiContext(
            database=self.database,
            store=self.store,
            metrics=self.metrics,
            stream=self.stream,
            send_command=self.ingest.send_command,
            device_health=lambda: self.presence.health,
            health=self.health,
            users=self.users,
        )

    async def start(self) -> None:
        """Start every part; ingest last, once triage and the relay are ready."""
        self._spawn(self.bus.relay(), "event-relay")
        await self.triage.warm_up()
        with contextlib.suppress(TimeoutError):
            await self.bus.wait_relaying(5.0)
        http = await self.http.start(self.settings.http_host, self.settings.http_port)
        self.http_address = http.sockets[0].getsockname()[:2]
        ingest = await self.ingest.start(
            self.settings.ingest_host, self.settings.ingest_port
        )
        self.ingest_address = ingest.sockets[0].getsockname()[:2]
        self._spawn(self.dispatcher.redispatch_forever(), "redispatch")
        self._spawn(self.presence.watch_forever(), "presence")
        if self.retention.days > 0:
            self._spawn(self.retention.run_forever(), "photo-retention")
        logger.info(
            "hub ingest on %s:%s, HTTP on %s:%s",
            *self.ingest_address,
            *self.http_address,
        )

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        self._background.append(asyncio.create_task(coroutine, name=name))

    async def stop(self) -> None:
        """Stop in reverse order; uploads in progress still get their ack."""
        logger.info("hub stopping")
        await self.ingest.close()
        self.stream.close_all()
        await self.http.close()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.uploads.close()
        await self.alerts.close()
        await self.bus.close()
        loop = asyncio.get_running_loop()
        await self.dispatcher.close()
        await loop.run_in_executor(None, self.triage.close)
        await loop.run_in_executor(None, self.database.close)
        logger.info("hub stopped")

    def _disk_free_bytes(self) -> float:
        try:
            return float(self.store.free_bytes())
        except StoreError:
            return math.nan

    async def _replay(
        self, filters: StreamFilter, since: datetime
    ) -> list[dict[str, Any]]:
        """The events a reconnecting stream client missed, from PostgreSQL."""
        numbers = [filters.farm_id, filters.coop_id]
        if any(text is not None and not text.isdigit() for text in numbers):
            return []  # no farm or coop has such an id: live events never match
        query = repository.ReplayQuery(
            farm_ids=filters.viewer.farm_scope(),
            since=since,
            limit=REPLAY_MAX_EVENTS,
            farm_id=int(filters.farm_id) if filters.farm_id else None,
            coop_id=int(filters.coop_id) if filters.coop_id else None,
            device_id=filters.device_id,
        )
        return await self.database.run(repository.replay_events, query)

    async def health(self) -> dict[str, Any]:
        """What ``GET /healthz`` reports: each dependency ok or not."""
        loop = asyncio.get_running_loop()
        try:
            space_problem = await loop.run_in_executor(None, self.store.space_problem)
            disk = "ok" if space_problem is None else f"full: {space_problem}"
        except StoreError as exc:
            disk = f"unreadable: {exc}"
        checks = {
            "database": await _check(self.database.run(repository.ping)),
            "redis": "ok" if self.bus.relaying else "unreachable",
            "disk": disk,
        }
        ok = checks["database"] == "ok" and disk == "ok"
        return {
            "status": "ok" if ok else "degraded",
            "checks": checks,
            "devices_connected": len(self.ingest.sessions),
            "stream_clients": len(self.stream.clients),
        }

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self.stop()


async def _check(probe: Coroutine[Any, Any, Any]) -> str:
    try:
        await asyncio.wait_for(probe, HEALTH_TIMEOUT_S)
    except Exception as exc:
        return f"unreachable: {exc}"
    return "ok"


def _limits(settings: Settings) -> IngestLimits:
    return IngestLimits(
        handshake_timeout_s=settings.handshake_timeout_s,
        idle_timeout_s=settings.idle_timeout_s,
        max_payload_bytes=settings.max_payload_bytes,
    )
