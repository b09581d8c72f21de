"""Tests of the event contract shared by workers, hubs and WebSocket clients."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from farmeye import events


def triage_event(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "farm_id": 1,
        "coop_id": 7,
        "device_id": "dev_0123456789abcdef",
        "capture_id": 42,
        "label": "coccidiosis",
        "scores": {"healthy": 0.1, "coccidiosis": 0.9},
        "model_version": "triage-2026.05",
    }
    fields.update(overrides)
    return events.make_event("triage", **fields)


def test_event_has_every_standard_key_and_a_utc_time() -> None:
    """make_event fills absent standard keys with null and stamps the time in UTC."""
    event = events.make_event("device", farm_id=1, coop_id="coop-a", status="online")
    assert event["v"] == events.EVENT_VERSION
    assert event["capture_id"] is None and event["label"] is None
    assert event["status"] == "online"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"])


def test_event_time_can_be_given() -> None:
    """An explicit aware datetime becomes the event's time."""
    moment = datetime(2026, 5, 1, 6, 30, tzinfo=UTC)
    assert triage_event(time=moment)["time"] == "2026-05-01T06:30:00.000Z"


@pytest.mark.parametrize("kind", events.EVENT_TYPES)
def test_every_event_type_round_trips(kind: str) -> None:
    """Each event type survives encode_event and decode_event unchanged."""
    event = events.make_event(kind, farm_id=3, coop_id=4, capture_id=5)
    assert events.decode_event(events.encode_event(event)) == event


def test_encoded_event_is_compact_utf8_json() -> None:
    """encode_event writes compact JSON that any client can parse."""
    data = events.encode_event(triage_event(message="coop 7 \N{WARNING SIGN}"))
    assert b", " not in data
    assert json.loads(data.decode("utf-8"))["message"].endswith("\N{WARNING SIGN}")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"label": "flu"}, "label"),
        ({"scores": {"healthy": 1.2}}, "scores"),
        ({"scores": {"flu": 0.5}}, "scores"),
        ({"capture_id": 0}, "capture_id"),
        ({"device_id": "camera-1"}, "device_id"),
        ({"coop_id": 0}, "coop_id"),
        ({"model_version": ""}, "model_version"),
        ({"Bad-Key": 1}, "top level"),
        ({"time": "yesterday"}, "time"),
    ],
)
def test_invalid_events_are_refused_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    """make_event raises ValueError that names the field breaking event.json."""
    with pytest.raises(ValueError, match=field):
        triage_event(**overrides)


def test_model_versions_from_the_shipped_card_are_accepted() -> None:
    """Versions such as "2026-12-03-46358871/triage" (card version/kind) pass."""
    event = triage_event(model_version="2026-12-03-46358871/triage")
    assert events.decode_event(events.encode_event(event)) == event


def test_farm_wide_alert_has_no_coop() -> None:
    """An alert may concern the whole farm, with coop_id null."""
    alert = events.make_event("alert", farm_id=1, coop_id=None, message="feed")
    assert events.decode_event(events.encode_event(alert))["coop_id"] is None


def test_unknown_event_type_is_refused() -> None:
    """A type outside EVENT_TYPES is a ValueError."""
    with pytest.raises(ValueError, match="type"):
        events.make_event("weather", farm_id=1, coop_id=1)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"\xff", "not UTF-8 JSON"),
        (b'{"v": NaN}', "not UTF-8 JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"type": "capture"}', "required"),
        (b" " * (events.MAX_EVENT_BYTES + 1), "over the limit"),
    ],
)
def test_decode_event_explains_bad_data(data: bytes, reason: str) -> None:
    """decode_event raises ValueError saying what was wrong with the message."""
    with pytest.raises(ValueError, match=reason):
        events.decode_event(data)


def test_decode_event_accepts_text() -> None:
    """decode_event takes str as well as bytes, as redis clients may return."""
    event = triage_event()
    assert events.decode_event(events.encode_event(event).decode()) == event


@pytest.mark.parametrize("validate", [True, False])
def test_encode_event_refuses_oversized_events(validate: bool) -> None:
    """Events over MAX_EVENT_BYTES are refused so clients never get huge
    messages, also when the schema check is skipped."""
    event = triage_event(note="x" * events.MAX_EVENT_BYTES)
    with pytest.raises(ValueError, match="over"):
        events.encode_event(event, validate=validate)


def test_encode_event_can_skip_the_check_of_a_fresh_event() -> None:
    """validate=False gives the same bytes as the checked encoding."""
    event = triage_event()
    assert events.encode_event(event, validate=False) == events.encode_event(event)


def test_encode_event_checks_hand_built_events() -> None:
    """encode_event validates, so a hand-built dict cannot reach the channel."""
    event = triage_event()
    del event["time"]
    with pytest.raises(ValueError, match="time"):
        events.encode_event(event)


def test_constants_match_the_contract() -> None:
    """Channel name and event types agree with docs and schemas/event.json."""
    assert events.EVENTS_CHANNEL == "farmeye:events"
    enum = schemas.load("event")["properties"]["type"]["enum"]
    assert tuple(enum) == events.EVENT_TYPES


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200) | st.text(max_size=200))
def test_decode_event_raises_only_value_error(data: bytes | str) -> None:
    """Arbitrary bytes or text never raise anything but ValueError."""
    try:
        events.decode_event(data)
    except ValueError as exc:
        assert str(exc)
