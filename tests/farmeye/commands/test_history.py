"""``farmeye history``: recent captures and verdicts, from PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from farmeye.cli import main
from tests.hub.support import Camera, add_camera, sql


def capture(db_url: str, camera: Camera, sha_digit: str, age: str) -> int:
    """A capture row taken ``age`` ago, with a triage verdict."""
    rows = sql(
        db_url,
        "INSERT INTO captures (device_id, coop_id, farm_id, sha256, size_bytes,"
        " content_type, captured_at, storage_key)"
        " VALUES (%s, %s, %s, %s, 1, 'image/jpeg', now() - %s::interval, %s)"
        " RETURNING id",
        camera.device_id,
        camera.coop_id,
        camera.farm_id,
        sha_digit * 64,
        age,
        sha_digit * 64,
    )
    capture_id = int(rows[0][0])
    sql(
        db_url,
        "INSERT INTO triage_results (capture_id, label, scores,"
        " model_version, latency_ms) VALUES (%s, 'coccidiosis',"
        " '{\"coccidiosis\": 0.9}', 'm/triage', 3)",
        capture_id,
    )
    return capture_id


def run(db_url: str, tmp_path: Path, *args: str) -> str:
    env = {"FARMEYE_DATABASE_URL": db_url, "FARMEYE_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["history", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_history_table_lists_newest_first_with_verdicts(
    tmp_path: Path, db_url: str
) -> None:
    """The table shows captures newest first with coop names and verdicts."""
    camera = add_camera(db_url, coop="north")
    old, new = (
        capture(db_url, camera, "a", "2 hours"),
        capture(db_url, camera, "b", "1 minute"),
    )

    lines = run(db_url, tmp_path).splitlines()

    assert lines[0].split()[:2] == ["ID", "CAPTURED"]
    assert [line.split()[0] for line in lines[1:]] == [str(new), str(old)]
    assert "farm-a/north" in lines[1] and "coccidiosis 0.90" in lines[1]


def test_history_filters_by_coop_name_since_and_limit(
    tmp_path: Path, db_url: str
) -> None:
    """--coop takes a name, --since a duration, --limit caps the rows; JSON lines."""
    north, south = add_camera(db_url, coop="north"), add_camera(db_url, coop="south")
    capture(db_url, north, "a", "3 days")
    recent = capture(db_url, north, "b", "10 minutes")
    capture(db_url, north, "c", "20 minutes")
    capture(db_url, south, "d", "5 minutes")

    output = run(
        db_url, tmp_path, "--coop", "north", "--since", "1h", "--limit", "1", "--json"
    )

    rows = [json.loads(line) for line in output.splitlines()]
    assert [row["id"] for row in rows] == [recent]
    assert rows[0]["triage"]["label"] == "coccidiosis"


def test_unknown_coop_is_a_usage_error(tmp_path: Path, db_url: str) -> None:
    """Naming a coop that does not exist fails with the name in the message."""
    env = {"FARMEYE_DATABASE_URL": db_url, "FARMEYE_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["history", "--coop", "attic"], env=env)
    assert result.exit_code == 2
    assert "attic" in result.output
