"""Announcing stored analyses on the events channel every hub listens to.

One ``analysis`` event per stored analysis (:mod:`farmeye.events`), published
in one pipeline per batch after the commit. Events are at-least-once: a
redelivered task announces the stored analysis again, so subscribers treat
``(capture_id, model_version)`` as the key. Redis restarting is waited out for
a while; an event that still cannot go out is logged, and the task's own
acknowledgement, which needs the same Redis, then fails too, so the task comes
back and announces again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis

from farmeye.events import EVENTS_CHANNEL, encode_event, make_event
from workers.settings import redis_client
from workers.store import StoredAnalysis

logger = logging.getLogger(__name__)

RETRY_WINDOW_S = 30.0
"""How long publishing keeps retrying while Redis does not answer."""

RETRY_DELAY_S = 0.5


class Announcer:
    """Publishes analysis events over its own Redis connection pool."""

    def __init__(self, redis_url: str, *, channel: str = EVENTS_CHANNEL) -> None:
        self.channel = channel
        self._client = redis_client(redis_url)

    def announce(self, analyses: Sequence[StoredAnalysis]) -> int:
        """Publish one event per analysis; returns how many went out."""
        messages = [
            encode_event(analysis_event(item), validate=False) for item in analyses
        ]
        if not messages:
            return 0
        deadline_s = time.monotonic() + RETRY_WINDOW_S
        while True:
            try:
                self._publish(messages)
                return len(messages)
            except (redis.RedisError, OSError) as exc:
                if time.monotonic() + RETRY_DELAY_S > deadline_s:
                    logger.exception(
                        "lost %d analysis events: Redis did not answer for %.0f s",
                        len(messages),
                        RETRY_WINDOW_S,
                    )
                    return 0
                logger.warning("cannot publish events (%s); retrying", exc)
                time.sleep(RETRY_DELAY_S)

    def _publish(self, messages: Sequence[bytes]) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            for message in messages:
                pipe.publish(self.channel, message)
            pipe.execute()

    def close(self) -> None:
        self._client.close()


def analysis_event(analysis: StoredAnalysis) -> dict[str, Any]:
    """The ``analysis`` event of a stored analysis (done or failed)."""
    return make_event(
        "analysis",
        farm_id=analysis.farm_id,
        coop_id=analysis.coop_id,
        device_id=analysis.device_id,
        capture_id=analysis.capture_id,
        label=analysis.label,
        scores=analysis.scores,
        model_version=analysis.model_version,
        status=analysis.status,
        heatmap=analysis.heatmap,
        error=analysis.error,
    )
