"""Fetching the photos that the hub put into Redis beside their tasks.

The hub stores each queued photo under a key (:func:`farmeye.tasks.stash_photo`)
and names the key in the task. A worker reads the photo when the task starts
and deletes it once the analysis is committed; a key that expires or goes
missing is not a loss, because the capture then goes back to the hub, which
still holds the photo and queues it again.
"""

from __future__ import annotations

import logging

import redis

from workers.settings import redis_client

logger = logging.getLogger(__name__)


class PhotoUnavailable(RuntimeError):
    """Redis did not answer; the task should be tried again later."""


class PhotoSource:
    """Reads and discards stashed photos over its own Redis connection pool."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis_client(redis_url)

    def fetch(self, key: str) -> bytes | None:
        """The photo under ``key``, or None if it is not (or no longer) there."""
        try:
            data = self._client.get(key)
        except (redis.RedisError, OSError) as exc:
            raise PhotoUnavailable(
                f"cannot read photo {key} from Redis: {exc}"
            ) from None
        if data is None or isinstance(data, bytes):
            return data
        raise PhotoUnavailable(f"photo {key} came back as {type(data).__name__}")

    def discard(self, key: str) -> None:
        """Delete a photo whose analysis is stored; its expiry covers a failure."""
        try:
            self._client.unlink(key)
        except (redis.RedisError, OSError) as exc:
            logger.warning("could not delete photo %s (%s); it expires later", key, exc)

    def close(self) -> None:
        self._client.close()
