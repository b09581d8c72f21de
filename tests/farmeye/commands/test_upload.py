"""``farmeye upload``: photos sent by hand over the camera protocol."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from farmeye.cli import main
from farmeye.commands.upload import Outcome, Target, _VerdictWatcher
from tests.hub.support import HubThread, add_camera, hub_settings, photo, sql


@pytest.fixture
def hub(tmp_path: Path, db_url: str, redis_db_url: str) -> Iterator[HubThread]:
    """A running hub in a thread of this process."""
    running = HubThread(hub_settings(tmp_path / "hub"), db_url, redis_db_url)
    try:
        yield running
    finally:
        running.stop()


def photos(folder: Path, count: int) -> list[str]:
    paths = []
    for seed in range(count):
        path = folder / f"photo-{seed}.jpg"
        path.write_bytes(photo(seed))
        paths.append(str(path))
    return paths


def test_upload_json_prints_one_object_per_image(
    tmp_path: Path, db_url: str, hub: HubThread
) -> None:
    """Each image gets a JSON line with its capture id; a repeat is a duplicate."""
    camera = add_camera(db_url)
    files = photos(tmp_path, 3)
    args = [
        "upload",
        *files,
        files[0],
        "--device",
        camera.device_id,
        "--secret",
        camera.secret,
        "--hub",
        hub.ingest,
        "--json",
    ]

    result = CliRunner().invoke(main, args, env={"FARMEYE_DATA_DIR": str(tmp_path)})

    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["file"] for line in lines] == [*files, files[0]]
    assert lines[3]["capture_id"] == lines[0]["capture_id"]
    # Both copies travel at once: either may be the one stored first.
    assert {lines[0]["duplicate"], lines[3]["duplicate"]} == {False, True}
    assert [line["duplicate"] for line in lines[1:3]] == [False, False]
    assert {"triage", "analysis", "latency_ms"} <= set(lines[0])
    assert sql(db_url, "SELECT count(*) FROM captures") == [(3,)]


def test_upload_with_wrong_secret_fails_with_a_reason(
    tmp_path: Path, db_url: str, hub: HubThread
) -> None:
    """A refused device ends the command with a message naming auth_failed."""
    camera = add_camera(db_url)
    args = [
        "upload",
        *photos(tmp_path, 1),
        "--device",
        camera.device_id,
        "--secret",
        "wrong",
        "--hub",
        hub.ingest,
    ]

    result = CliRunner().invoke(main, args, env={"FARMEYE_DATA_DIR": str(tmp_path)})

    assert result.exit_code == 1
    assert "auth_failed" in result.output


def test_refused_image_is_reported_and_exit_status_is_one(
    tmp_path: Path, db_url: str, hub: HubThread
) -> None:
    """A file that is no photo gets an error object; the others still upload."""
    camera = add_camera(db_url)
    good = photos(tmp_path, 1)[0]
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    args = [
        "upload",
        good,
        str(bad),
        "--device",
        camera.device_id,
        "--secret",
        camera.secret,
        "--hub",
        hub.ingest,
        "--json",
    ]

    result = CliRunner().invoke(main, args, env={"FARMEYE_DATA_DIR": str(tmp_path)})

    assert result.exit_code == 1
    good_line, bad_line = (json.loads(line) for line in result.output.splitlines())
    assert good_line["capture_id"] is not None
    assert bad_line["error"]["code"] == "bad_image"


def test_wait_without_a_token_is_refused_up_front(tmp_path: Path) -> None:
    """--wait with no token and no local `farmeye up` says how to get one."""
    image = photos(tmp_path, 1)[0]
    args = ["upload", image, "--device", "dev_abcdefgh", "--secret", "s", "--wait"]

    result = CliRunner().invoke(
        main, args, env={"FARMEYE_DATA_DIR": str(tmp_path), "FARMEYE_TOKEN": ""}
    )

    assert result.exit_code != 0
    assert "--token" in result.output


def test_verdicts_heard_before_the_ack_are_kept_for_its_capture() -> None:
    """Triage is often done by the ack, so its event can be read first; the
    watcher keeps it until the ack names the capture, instead of dropping it."""

    async def scenario() -> Outcome:
        outcome = Outcome(Path("dropping.jpg"), started_s=0.0)
        watcher = _VerdictWatcher(Target("", "", None, None), "cam-1", [outcome])
        scores = {"healthy": 0.9, "coccidiosis": 0.1}
        for kind in ("triage", "analysis"):
            watcher._apply(
                {"type": kind, "capture_id": 7, "label": "healthy", "scores": scores}
            )
        watcher._apply({"type": "triage", "capture_id": 8, "label": "salmonella"})
        outcome.capture_id = 7  # the ack is read only now
        await watcher.wait_all(timeout_s=1.0)
        return outcome

    outcome = asyncio.run(scenario())
    assert outcome.error is None and outcome.done.is_set()
    assert (
        outcome.triage
        == outcome.analysis
        == {
            "label": "healthy",
            "scores": {"healthy": 0.9, "coccidiosis": 0.1},
        }
    )
