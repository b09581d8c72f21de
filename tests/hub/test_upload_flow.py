"""An upload's path end to end: ack, row, file, triage event, dispatch."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path

import redis

from farmeye.tasks import PHOTO_TTL_S
from hub.dispatch import queue_keys
from hub.store import DiskImageStore
from tests.hub.support import (
    add_camera,
    add_user,
    client_for,
    event_stream,
    hub_settings,
    next_event,
    photo,
    running_hub,
    sql,
)


def test_upload_is_acked_stored_triaged_and_queued(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """An upload gets an ack, a row, a file, a triage event and a queued task."""
    camera = add_camera(db_url)
    token = add_user(db_url, "ann", "farm-a")
    data = photo(1)

    async def scenario() -> tuple[int, dict]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with event_stream(hub, token) as stream:
                async with client_for(hub, camera) as client:
                    ack = await client.upload(data)
                triage = await next_event(stream, "triage", capture_id=ack.capture_id)
            return ack.capture_id, triage

    capture_id, triage = asyncio.run(scenario())

    sha = hashlib.sha256(data).hexdigest()
    rows = sql(db_url, "SELECT device_id, sha256, dispatch_state FROM captures")
    assert rows == [(camera.device_id, sha, "queued")]
    assert DiskImageStore(tmp_path).get(sha) == data
    assert triage["label"] in ("healthy", "coccidiosis", "salmonella", "newcastle")
    assert triage["farm_id"] == camera.farm_id
    stored = sql(
        db_url, "SELECT label FROM triage_results WHERE capture_id = %s", capture_id
    )
    assert stored == [(triage["label"],)]

    (task,) = queued_tasks(redis_db_url)
    assert task["capture_id"] == capture_id
    assert task["triage_label"] == triage["label"]
    assert "image_b64" not in task
    stash = redis.Redis.from_url(redis_db_url)
    try:
        assert stash.get(task["image_key"]) == data
        assert 0 < stash.ttl(task["image_key"]) <= PHOTO_TTL_S
    finally:
        stash.close()


def queued_tasks(redis_url: str) -> list[dict]:
    """The keyword arguments of every analysis task waiting in Redis."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = [item for key in queue_keys() for item in client.lrange(key, 0, -1)]
    finally:
        client.close()
    tasks = []
    for item in raw:
        envelope = json.loads(item)
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        tasks.append(json.loads(body)[1])
    return tasks


def test_retried_upload_gets_same_capture_id(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """Sending the same photo again returns the first capture id, duplicate=true."""
    camera = add_camera(db_url)
    data = photo(2)

    async def scenario() -> list:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            acks = []
            for _ in range(2):
                async with client_for(hub, camera) as client:
                    acks.append(await client.upload(data))
            return acks

    first, second = asyncio.run(scenario())
    assert second.capture_id == first.capture_id
    assert (first.duplicate, second.duplicate) == (False, True)
    assert sql(db_url, "SELECT count(*) FROM captures") == [(1,)]
