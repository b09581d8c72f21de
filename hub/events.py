"""Events over Redis pub/sub: publish what this hub learns, relay what any
hub or worker announces to this hub's WebSocket clients.

Every event takes the same path, Redis first and then the relay, so a client
connected to any hub sees the same stream. While Redis is unreachable the hub
still delivers its own events to its own clients directly, and the relay
keeps reconnecting in the background.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from farmeye.events import (
    EVENT_TYPES,
    EVENTS_CHANNEL,
    MAX_EVENT_BYTES,
    encode_event,
    make_event,
)
from hub.metrics import HubMetrics
from hub.stream import EventStream

logger = logging.getLogger(__name__)

RECONNECT_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Waits between attempts to resubscribe after Redis went away."""

SOCKET_TIMEOUT_S = 5.0
"""Seconds a publish may take before Redis is taken for unreachable."""


class EventBus:
    """Publisher to, and relay from, the Redis events channel."""

    def __init__(
        self,
        redis_url: str,
        stream: EventStream,
        metrics: HubMetrics,
        channel: str = EVENTS_CHANNEL,
    ) -> None:
        self.stream = stream
        self.metrics = metrics
        self.channel = channel
        self._redis = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=15,
        )
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        """Called with every event relayed from Redis (must not block)."""
        self._relay_up = asyncio.Event()
        self._outage_logged = False

    async def emit(self, type: str, **fields: Any) -> dict[str, Any] | None:
        """Build, validate and publish an event; None if it was invalid (a bug)."""
        try:
            event = make_event(type, **fields)
            message = encode_event(event, validate=False)
        except ValueError:
            logger.exception("hub built an invalid %s event", type)
            return None
        await self._send(event, message)
        return event

    async def publish(self, event: Mapping[str, Any]) -> None:
        """Send ``event`` to every hub; to this hub's clients only if Redis is down."""
        await self._send(event, encode_event(event))

    async def _send(self, event: Mapping[str, Any], message: bytes) -> None:
        try:
            await self._redis.publish(self.channel, message)
        except (RedisError, OSError) as exc:
            if not self._outage_logged:
                logger.warning(
                    "cannot publish events to Redis (%s); "
                    "serving this hub's clients directly",
                    exc,
                )
                self._outage_logged = True
            self.stream.broadcast(event, message)
            return
        if not self._relay_up.is_set():
            # Published, but our own subscription is not back yet.
            self.stream.broadcast(event, message)
        self._outage_logged = False

    @property
    def relaying(self) -> bool:
        """Whether the relay is subscribed to Redis right now."""
        return self._relay_up.is_set()

    async def wait_relaying(self, timeout_s: float) -> None:
        """Return once the relay is subscribed (TimeoutError after ``timeout_s``)."""
        await asyncio.wait_for(self._relay_up.wait(), timeout_s)

    async def relay(self) -> None:
        """Forward every event on the channel to the WebSocket clients, forever."""
        attempt = 0
        while True:
            try:
                await self._relay_once()
            except (RedisError, OSError) as exc:
                self._relay_up.clear()
                delay_s = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
                if attempt == 0:
                    logger.warning("event relay lost Redis (%s); reconnecting", exc)
                attempt += 1
                await asyncio.sleep(delay_s)
            else:
                attempt = 0

    async def _relay_once(self) -> None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(self.channel)
            self._relay_up.set()
            logger.info("relaying events from Redis channel %s", self.channel)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    self._deliver(message["data"])

    def _deliver(self, data: bytes) -> None:
        try:
            event = parse_relayed(data)
        except ValueError as exc:
            logger.warning("dropping a malformed event from Redis: %s", exc)
            return
        self.metrics.events_relayed.inc()
        self.stream.broadcast(event, data)
        for listener in self.listeners:
            listener(event)

    async def close(self) -> None:
        await self._redis.aclose()


def parse_relayed(data: bytes) -> dict[str, Any]:
    """Read an event from the channel, checking what the relay relies on.

    Every publisher (hubs, workers) validates its events against the schema
    with :func:`farmeye.events.make_event`; the relay checks only the shape
    its filters use, since a full schema check costs more than the broadcast
    to a thousand clients.
    """
    if len(data) > MAX_EVENT_BYTES:
        raise ValueError(f"event of {len(data)} bytes is over {MAX_EVENT_BYTES}")
    try:
        event = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"event is not UTF-8 JSON: {exc}") from None
    if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
        raise ValueError(f"not an event: {data[:120]!r}")
    if "farm_id" not in event:
        raise ValueError("event has no farm_id, so no client may see it")
    return event
