"""The event contract: what the hub and workers publish and clients receive.

Events travel as one JSON object per message on the Redis channel
:data:`EVENTS_CHANNEL`; every hub relays them unchanged to its WebSocket
clients. Publishers build them with :func:`make_event` and
:func:`encode_event`; subscribers read them with :func:`decode_event`. The
standard keys are always present (``null`` when they do not apply), so a
JavaScript client can read ``event.label`` without checking for it first.
This module does not import redis: callers publish the bytes themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from farmeye.protocol import format_time, schema_problem

EVENTS_CHANNEL: Final = "farmeye:events"
"""Redis pub/sub channel that workers and hubs publish to and every hub reads."""

EVENT_TYPES: Final = ("capture", "triage", "analysis", "alert", "device")
"""capture: a photo was stored; triage / analysis: a verdict exists; alert: a
rule fired; device: a camera came online or went offline."""

EVENT_VERSION: Final = 1
"""Value of every event's ``v``; raised only for changes old clients misread."""

MAX_EVENT_BYTES: Final = 65536
"""Largest encoded event; big things (photos, heatmaps) are fetched by id."""


def make_event(
    type: str,
    *,
    farm_id: int | str,
    coop_id: int | str | None,
    device_id: str | None = None,
    capture_id: int | None = None,
    label: str | None = None,
    scores: Mapping[str, float] | None = None,
    model_version: str | None = None,
    time: datetime | str | None = None,
    validate: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Build and validate one event; ``time`` defaults to now (UTC).

    ``extra`` adds type-specific keys, e.g. ``status="online"`` on a device
    event or ``alert_id`` and ``message`` on an alert. Raises ValueError with
    the offending field when the result breaks ``schemas/event.json``.
    ``validate=False`` skips that check for an event rebuilt from rows whose
    live event was checked when it was made (the replay of the stream).
    """
    event: dict[str, Any] = {
        "v": EVENT_VERSION,
        "type": type,
        "time": format_time(time if time is not None else datetime.now(UTC)),
        "farm_id": farm_id,
        "coop_id": coop_id,
        "device_id": device_id,
        "capture_id": capture_id,
        "label": label,
        "scores": dict(scores) if scores is not None else None,
        "model_version": model_version,
    }
    event.update(extra)
    if validate:
        validate_event(event)
    return event


def validate_event(event: Mapping[str, Any]) -> None:
    """Raise ValueError naming the field unless ``event`` fits event.json."""
    problem = schema_problem("event", event)
    if problem is not None:
        raise ValueError(f"invalid event {problem}")


def encode_event(event: Mapping[str, Any], *, validate: bool = True) -> bytes:
    """Validated compact UTF-8 JSON, ready to publish.

    Pass ``validate=False`` for an event fresh from :func:`make_event`, which
    has just checked it: the schema check is most of the cost of encoding.
    """
    if validate:
        validate_event(event)
    data = json.dumps(
        dict(event), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")
    if len(data) > MAX_EVENT_BYTES:
        raise ValueError(
            f"event is {len(data)} bytes encoded, over {MAX_EVENT_BYTES}; "
            "publish ids and let clients fetch large data over HTTP"
        )
    return data


def decode_event(data: bytes | str) -> dict[str, Any]:
    """Parse and validate one published event, or raise ValueError saying why."""
    if len(data) > MAX_EVENT_BYTES:
        raise ValueError(
            f"event is {len(data)} bytes, over the limit of {MAX_EVENT_BYTES}"
        )
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"event is not UTF-8 JSON: {exc}"[:300]) from None
    if not isinstance(value, dict):
        raise ValueError(f"event is a JSON {type(value).__name__}, expected an object")
    validate_event(value)
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
