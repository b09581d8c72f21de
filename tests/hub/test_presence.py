"""Device presence: online when connected, offline after silence, with events."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.hub.support import (
    add_camera,
    add_user,
    client_for,
    event_stream,
    hub_settings,
    next_event,
    running_hub,
    sql,
)


def test_device_goes_online_then_offline_after_silence(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """A connecting camera is announced online; unheard for long, offline."""
    camera = add_camera(db_url)
    token = add_user(db_url, "ann", "farm-a")
    settings = hub_settings(tmp_path, device_offline_after_s=0.6)

    async def scenario() -> tuple[dict, dict]:
        async with running_hub(settings, db_url, redis_db_url) as hub:
            async with event_stream(hub, token) as stream:
                async with client_for(hub, camera) as client:
                    await client.send_health(camera_ok=True, spool_depth=0)
                    online = await next_event(stream, "device", status="online")
                offline = await next_event(stream, "device", status="offline")
                return online, offline

    online, offline = asyncio.run(scenario())
    assert online["device_id"] == offline["device_id"] == camera.device_id
    assert sql(
        db_url, "SELECT online FROM devices WHERE id = %s", camera.device_id
    ) == [(False,)]
