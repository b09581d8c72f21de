"""An upload's path end to end: ack, row, file, triage event, dispatch."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

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


def test_task_body_encoding_matches_plain_json() -> None:
    """The hub's faster task JSON decodes to exactly what json.dumps would give."""
    import json

    from farmeye.tasks import analyse_arguments
    from hub.dispatch import Base64Text, encode_task_body

    photo_b64 = Base64Text.of(photo(3))
    body = ([], analyse_arguments(7, photo_b64, "salmonella"), {"chain": None})

    assert json.loads(encode_task_body(body)) == json.loads(json.dumps(body))
    assert encode_task_body(([1], {"a": "x"}, {})) == json.dumps(([1], {"a": "x"}, {}))
