"""Counting worker deaths per task, so a photo that kills workers is caught.

With late acknowledgement, a task whose photo makes the process die (out of
memory in a decoder, a crash in a native library) comes back after every
death and would take down worker after worker. Each task marks itself in
Redis when it starts and clears the mark whenever it ends in any way the code
sees; a mark still there when the task arrives again means the process died
with it. After ``max_crashes`` such deaths the task is recorded as failed
without touching the photo. Redis being unreachable only disables the count.
"""

from __future__ import annotations

import logging

import redis

from workers.settings import redis_client

logger = logging.getLogger(__name__)

KEY_PREFIX = "farmeye:worker:unfinished:"
"""Followed by the Celery task id; holds how many deliveries did not finish."""

KEY_TTL_S = 7 * 24 * 3600
"""Marks of tasks that never come back expire after a week."""


class CrashCounter:
    """Marks tasks as started and finished in Redis."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis_client(redis_url)

    def start(self, task_id: str) -> int:
        """Mark ``task_id`` started; how many earlier deliveries died with it."""
        try:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.incr(KEY_PREFIX + task_id)
                pipe.expire(KEY_PREFIX + task_id, KEY_TTL_S)
                started, _ = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            logger.debug("cannot count deliveries of %s: %s", task_id, exc)
            return 0
        return max(0, int(started) - 1)

    def finish(self, task_id: str) -> None:
        """The task ended without its process dying."""
        try:
            self._client.delete(KEY_PREFIX + task_id)
        except (redis.RedisError, OSError) as exc:
            logger.debug("cannot clear the delivery count of %s: %s", task_id, exc)

    def close(self) -> None:
        self._client.close()
