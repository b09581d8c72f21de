"""``farmeye analyses retry``: failed captures go back to the hubs' queue."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

from farmeye.cli import main
from tests.hub.support import (
    Camera,
    add_camera,
    client_for,
    hub_settings,
    photo,
    running_hub,
    sql,
)
from tests.hub.test_upload_flow import queued_tasks


def capture(db_url: str, camera: Camera, digit: str, state: str) -> int:
    """A capture row in dispatch ``state``, with a failed analysis if failed."""
    ((capture_id,),) = sql(
        db_url,
        "INSERT INTO captures (device_id, coop_id, farm_id, sha256, size_bytes,"
        " content_type, captured_at, storage_key, dispatch_state)"
        " VALUES (%s, %s, %s, %s, 1, 'image/jpeg', now(), %s, %s) RETURNING id",
        camera.device_id,
        camera.coop_id,
        camera.farm_id,
        digit * 64,
        digit * 64,
        state,
    )
    if state == "failed":
        fail(db_url, capture_id)
    return int(capture_id)


def fail(db_url: str, capture_id: int) -> None:
    """What a worker leaves when a photo defeats it on every attempt."""
    sql(
        db_url,
        "INSERT INTO analyses (capture_id, model_version, status, error, attempts)"
        " VALUES (%s, 'm/full', 'failed', 'model error: out of memory', 2)",
        capture_id,
    )
    sql(
        db_url,
        "UPDATE captures SET dispatch_state = 'failed' WHERE id = %s",
        capture_id,
    )


def farmeye(db_url: str, tmp_path: Path, *args: str) -> Result:
    env = {"FARMEYE_DATABASE_URL": db_url, "FARMEYE_DATA_DIR": str(tmp_path)}
    return CliRunner().invoke(main, ["analyses", "retry", *args], env=env)


def states(db_url: str) -> dict[int, tuple[str, int]]:
    """Capture id -> (dispatch state, number of analyses)."""
    rows = sql(
        db_url,
        "SELECT c.id, c.dispatch_state, count(a.id) FROM captures c"
        " LEFT JOIN analyses a ON a.capture_id = c.id GROUP BY c.id",
    )
    return {int(row[0]): (row[1], int(row[2])) for row in rows}


def test_named_failed_captures_are_retried_and_the_rest_explained(
    tmp_path: Path, db_url: str
) -> None:
    """Only failed captures with their photo go back; each refusal says why,
    and the command exits 1 so a script notices."""
    camera = add_camera(db_url)
    failed = capture(db_url, camera, "a", "failed")
    done = capture(db_url, camera, "b", "done")
    waiting = capture(db_url, camera, "c", "queued")
    expired = capture(db_url, camera, "d", "failed")
    sql(db_url, "UPDATE captures SET photo_deleted_at = now() WHERE id = %s", expired)
    sql(db_url, "UPDATE captures SET dispatch_claimed_until = now() + interval '1 h'")

    ids = [failed, done, waiting, expired, 999_999]
    result = farmeye(db_url, tmp_path, *map(str, ids), "--json")

    assert result.exit_code == 1, result.output
    printed = json.loads(result.stdout)
    assert printed["retried"] == [failed]
    refused = printed["refused"]
    assert refused.keys() == {str(done), str(waiting), str(expired), "999999"}
    assert refused[str(done)] == "its analysis is done"
    assert "waiting" in refused[str(waiting)]
    assert "deleted" in refused[str(expired)]
    assert refused["999999"] == "no such capture"
    after = states(db_url)
    assert after[failed] == ("pending", 0)
    assert after[expired] == ("failed", 1)
    assert (after[done][0], after[waiting][0]) == ("done", "queued")
    claims = sql(
        db_url, "SELECT dispatch_claimed_until FROM captures WHERE id = %s", failed
    )
    assert claims == [(None,)]


def test_all_failed_retries_every_failed_capture_and_says_what_failed(
    tmp_path: Path, db_url: str
) -> None:
    camera = add_camera(db_url)
    first = capture(db_url, camera, "a", "failed")
    second = capture(db_url, camera, "b", "failed")
    done = capture(db_url, camera, "c", "done")

    result = farmeye(db_url, tmp_path, "--all-failed")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines == [
        f"capture {capture_id}: waiting for analysis again"
        " (it failed: model error: out of memory)"
        for capture_id in (first, second)
    ]
    assert states(db_url)[done] == ("done", 0)
    again = farmeye(db_url, tmp_path, "--all-failed")
    assert (again.exit_code, again.stdout) == (0, "no failed captures to retry\n")


def test_retry_needs_captures_or_all_failed_but_not_both(
    tmp_path: Path, db_url: str
) -> None:
    for args in ([], ["1", "--all-failed"]):
        result = farmeye(db_url, tmp_path, *args)
        assert result.exit_code == 2
        assert "--all-failed" in result.output


def test_running_hub_queues_a_retried_capture_again(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """Upload, fail it as a worker would, retry: the hub sends a second task
    with the photo it kept."""
    camera = add_camera(db_url)

    def tasks_for(capture_id: int) -> int:
        return sum(t["capture_id"] == capture_id for t in queued_tasks(redis_db_url))

    async def until(check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.1)

    async def scenario() -> tuple[int, Result]:
        quick = {"redispatch_interval_s": 0.2, "pending_grace_s": 0.0}
        settings = hub_settings(tmp_path / "hub")
        async with running_hub(settings, db_url, redis_db_url, **quick) as hub:
            async with client_for(hub, camera) as client:
                capture_id = (await client.upload(photo(7))).capture_id
            await until(lambda: tasks_for(capture_id) == 1, "the first task")
            fail(db_url, capture_id)
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(
                None, farmeye, db_url, tmp_path, str(capture_id)
            )
            await until(lambda: tasks_for(capture_id) == 2, "the task of the retry")
            return capture_id, result

    capture_id, result = asyncio.run(scenario())

    assert result.exit_code == 0, result.output
    assert states(db_url)[capture_id] == ("queued", 0)
