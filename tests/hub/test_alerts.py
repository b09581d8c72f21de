"""Alert rules: k of the last n sick verdicts of a coop, once per cooldown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from redis.asyncio import Redis

from hub.alerts import AlertRule, should_alert
from tests.hub.support import (
    add_camera,
    add_user,
    event_stream,
    hub_settings,
    next_event,
    running_hub,
    sql,
)

RULE = AlertRule(min_hits=3, window_size=5, cooldown_s=3600.0)


@pytest.mark.parametrize(
    ("recent", "since_s", "expected"),
    [
        (["coccidiosis"] * 3, None, True),
        (
            ["coccidiosis", "healthy", "coccidiosis", "healthy", "coccidiosis"],
            None,
            True,
        ),
        (["coccidiosis", "coccidiosis", "salmonella", "healthy"], None, False),
        (["healthy"] * 5 + ["coccidiosis"] * 3, None, False),
        (["coccidiosis"] * 5, 60.0, False),
        (["coccidiosis"] * 5, 7200.0, True),
    ],
)
def test_should_alert_counts_the_window_and_honours_cooldown(
    recent: list[str], since_s: float | None, expected: bool
) -> None:
    """Only min_hits of the newest window_size verdicts, outside the cooldown, alert."""
    assert should_alert(RULE, "coccidiosis", recent, since_s) is expected


def test_healthy_never_alerts_and_bad_rules_are_refused() -> None:
    """A healthy run raises nothing; min_hits above window_size is an error."""
    assert not should_alert(RULE, "healthy", ["healthy"] * 5, None)
    with pytest.raises(ValueError, match="min_hits"):
        AlertRule(min_hits=6, window_size=5)


def test_sick_analyses_raise_one_alert_row_and_event(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """Five sick analysis events in a coop give one alert row and one alert event."""
    camera = add_camera(db_url)
    token = add_user(db_url, "ann", "farm-a")
    capture_ids = [
        sql(
            db_url,
            "INSERT INTO captures (device_id, coop_id, farm_id, sha256,"
            " size_bytes, content_type, captured_at, storage_key) VALUES"
            " (%s, %s, %s, %s, 1, 'image/jpeg', now(), 'k') RETURNING id",
            camera.device_id,
            camera.coop_id,
            camera.farm_id,
            f"{i:064x}",
        )[0][0]
        for i in range(5)
    ]
    for capture_id in capture_ids:
        sql(
            db_url,
            "INSERT INTO analyses (capture_id, model_version, status, label)"
            " VALUES (%s, 'm/full', 'done', 'salmonella')",
            capture_id,
        )

    async def scenario() -> dict:
        publisher = Redis.from_url(redis_db_url)
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with event_stream(hub, token) as stream:
                for capture_id in capture_ids:
                    message = json.dumps(
                        {
                            "v": 1,
                            "type": "analysis",
                            "time": "2026-05-01T06:00:00Z",
                            "farm_id": camera.farm_id,
                            "coop_id": camera.coop_id,
                            "device_id": camera.device_id,
                            "capture_id": capture_id,
                            "label": "salmonella",
                            "scores": {"salmonella": 0.9},
                            "model_version": "m/full",
                        }
                    )
                    await publisher.publish(hub.bus.channel, message)
                alert = await next_event(stream, "alert")
                # Leave time for a wrongly repeated alert to show up in the table.
                await asyncio.sleep(0.5)
        await publisher.aclose()
        return alert

    alert = asyncio.run(scenario())
    assert (alert["label"], alert["coop_id"]) == ("salmonella", camera.coop_id)
    assert sql(db_url, "SELECT label, coop_id FROM alerts") == [
        ("salmonella", camera.coop_id)
    ]
