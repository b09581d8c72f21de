"""The full-analysis task contract shared by the hub (sender) and workers.

The hub sends the task by name and never imports the worker code or
TensorFlow. Both sides build their Celery app with :func:`celery_settings`
so that queue names, priorities and acknowledgement rules agree.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

ANALYSE_TASK = "farmeye.analyse"
"""Name of the task that runs the full model on one capture."""

ANALYSIS_QUEUE = "farmeye.analysis"
"""Queue the hub publishes to and workers consume."""

PRIORITY_SUSPICIOUS = 0
"""Priority of a capture that triage did not call healthy (0 is served first)."""

PRIORITY_ROUTINE = 5
"""Priority of a capture that triage called healthy."""

VISIBILITY_TIMEOUT_S = 3600
"""Seconds before Redis redelivers an unacknowledged task; above any batch time."""


def celery_settings(broker_url: str) -> dict[str, Any]:
    """Celery configuration both sides use; workers add their own on top."""
    return {
        "broker_url": broker_url,
        "task_default_queue": ANALYSIS_QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
            # Task bodies are JSON text already; kombu's default base64 of
            # the body would only grow them and cost a decode per delivery.
            # Consumers read each message's own encoding, so base64 messages
            # still decode.
            "body_encoding": "utf-8",
        },
    }


PHOTO_KEY_PREFIX = "farmeye:photo:"
"""Redis keys holding the photos of queued analyses, by capture id."""

PHOTO_TTL_S = 7 * 24 * 3600
"""How long a queued photo stays in Redis if no worker takes it. A task that
finds its photo gone sends the capture back to the hub, which queues it
again from its own store, so the expiry loses nothing."""


class PhotoStash(Protocol):
    """The part of a ``redis.Redis`` client that :func:`stash_photo` uses."""

    def set(self, name: str, value: bytes, ex: int | None = None) -> Any: ...


def photo_key(capture_id: int) -> str:
    """The Redis key of the photo of a queued capture."""
    return f"{PHOTO_KEY_PREFIX}{capture_id}"


def stash_photo(client: PhotoStash, capture_id: int, data: bytes) -> str:
    """Put a capture's photo where workers fetch it; returns its key.

    The photo travels beside the task, not inside it: a raw Redis string
    costs one copy, where base64 in the JSON body cost an encode, a third
    more memory and a scan by every JSON decoder on the way.
    """
    key = photo_key(capture_id)
    client.set(key, data, ex=PHOTO_TTL_S)
    return key


def analyse_arguments(
    capture_id: int,
    triage_label: str | None,
    *,
    image_key: str | None = None,
    image_b64: str | None = None,
    published_at: float | None = None,
) -> dict[str, Any]:
    """Keyword arguments of :data:`ANALYSE_TASK`: all a remote worker needs.

    The photo is named by ``image_key`` (a Redis key, see :func:`stash_photo`),
    which is what the hub sends, or carried as ``image_b64``, which workers
    still accept from older hubs and from tools. ``published_at`` (Unix time,
    now by default) lets workers measure how long tasks wait in the queue;
    workers accept tasks without it.
    """
    if (image_key is None) == (image_b64 is None):
        raise ValueError("give exactly one of image_key and image_b64")
    arguments: dict[str, Any] = {
        "capture_id": capture_id,
        "triage_label": triage_label,
        "published_at": time.time() if published_at is None else published_at,
    }
    if image_key is not None:
        arguments["image_key"] = image_key
    else:
        arguments["image_b64"] = image_b64
    return arguments
