"""The full-analysis task contract shared by the hub (sender) and workers.

The hub sends the task by name and never imports the worker code or
TensorFlow. Both sides build their Celery app with :func:`celery_settings`
so that queue names, priorities and acknowledgement rules agree.
"""

from __future__ import annotations

import time
from typing import Any

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
            # Tasks are JSON text already; kombu's default base64 of the body
            # would grow every photo by a third in Redis and cost a decode per
            # delivery. Consumers read each message's own encoding, so older
            # base64 messages still decode.
            "body_encoding": "utf-8",
        },
    }


def analyse_arguments(
    capture_id: int,
    image_b64: str,
    triage_label: str | None,
    *,
    published_at: float | None = None,
) -> dict[str, Any]:
    """Keyword arguments of :data:`ANALYSE_TASK`: all a remote worker needs.

    ``published_at`` (Unix time, now by default) lets workers measure how long
    tasks wait in the queue; workers accept tasks without it.
    """
    return {
        "capture_id": capture_id,
        "image_b64": image_b64,
        "triage_label": triage_label,
        "published_at": time.time() if published_at is None else published_at,
    }
