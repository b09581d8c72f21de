"""``farmeye db``, ``devices`` and ``users`` against a real migrated database."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from farmeye import auth, config, db
from farmeye.cli import main
from farmeye.commands import admin


@pytest.fixture
def environment(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Settings that point the commands at this test's database only."""
    for name in config.Settings.model_fields:
        monkeypatch.delenv(f"FARMEYE_{name.upper()}", raising=False)
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    return {"FARMEYE_DATABASE_URL": db_url, "FARMEYE_DATA_DIR": str(tmp_path)}


@pytest.fixture
def conn(db_url: str) -> Iterator[Any]:
    connection = db.connect(db_url)
    yield connection
    connection.close()


def farmeye(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_devices_add_json_prints_id_and_secret_once(
    environment: dict[str, str], conn: Any
) -> None:
    """--json prints exactly device_id and secret; the secret verifies."""
    result = farmeye(environment, "devices", "add", "cam1", "--coop", "A", "--json")

    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert set(printed) == {"device_id", "secret"}
    [device] = db.list_devices(conn)
    assert (device.id, device.farm, device.coop) == (
        printed["device_id"],
        db.DEFAULT_FARM,
        "A",
    )
    with conn, conn.cursor() as cursor:
        cursor.execute("SELECT salt, verifier, iterations FROM devices")
        salt, verifier, iterations = cursor.fetchone()
    derived = auth.make_verifier(printed["secret"], salt, iterations)[1]
    assert derived == bytes(verifier)


def test_devices_add_text_names_farm_and_coop(
    environment: dict[str, str], conn: Any
) -> None:
    """Text output gives id and secret on their own lines; farm is created."""
    result = farmeye(
        environment, "devices", "add", "cam1", "--coop", "A", "--farm", "Hill"
    )

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("device_id: dev_")
    assert lines[1].startswith("secret: ")
    assert db.list_devices(conn)[0].farm == "Hill"


def test_devices_list_json_and_text(environment: dict[str, str]) -> None:
    """list shows every device, as JSON objects or one line each."""
    farmeye(environment, "devices", "add", "cam1", "--coop", "A")
    farmeye(environment, "devices", "add", "cam2", "--coop", "B")

    listed = json.loads(farmeye(environment, "devices", "list", "--json").stdout)
    text = farmeye(environment, "devices", "list").stdout

    assert [(d["name"], d["coop"], d["online"]) for d in listed] == [
        ("cam1", "A", False),
        ("cam2", "B", False),
    ]
    assert len(text.splitlines()) == 2 and "never" in text


def test_devices_list_empty_says_how_to_add(environment: dict[str, str]) -> None:
    """An empty list says how to add the first device."""
    assert "farmeye devices add" in farmeye(environment, "devices", "list").stdout


def test_devices_revoke_and_unknown_id(environment: dict[str, str]) -> None:
    """revoke marks the device; an unknown id exits 1 with a message."""
    added = farmeye(environment, "devices", "add", "cam", "--coop", "A", "--json")
    device_id = json.loads(added.stdout)["device_id"]

    first = farmeye(environment, "devices", "revoke", device_id)
    again = farmeye(environment, "devices", "revoke", device_id)
    missing = farmeye(environment, "devices", "revoke", "dev_missing")

    assert first.stdout == f"revoked {device_id}\n"
    assert "already revoked" in again.stdout
    assert missing.exit_code == 1 and "no device 'dev_missing'" in missing.output
    listed = json.loads(farmeye(environment, "devices", "list", "--json").stdout)
    assert listed[0]["revoked_at"] is not None


def test_devices_rotate_prints_new_secret(environment: dict[str, str]) -> None:
    """rotate prints a different secret for the same device."""
    added = json.loads(
        farmeye(environment, "devices", "add", "cam", "--coop", "A", "--json").stdout
    )
    rotated = farmeye(
        environment, "devices", "rotate", added["device_id"], "--json"
    ).stdout
    assert json.loads(rotated)["device_id"] == added["device_id"]
    assert json.loads(rotated)["secret"] != added["secret"]


def test_users_add_json_token_finds_user(
    environment: dict[str, str], conn: Any
) -> None:
    """--json prints exactly user_id and token; the token identifies the user."""
    result = farmeye(
        environment,
        "users",
        "add",
        "ann",
        "--farm",
        "Hill",
        "--role",
        "viewer",
        "--json",
    )

    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert set(printed) == {"user_id", "token"}
    user = db.user_for_token(conn, printed["token"])
    assert user == db.User(printed["user_id"], "ann")
    assert db.farms_of_user(conn, user.id)[0].role == "viewer"


def test_users_add_rejects_unknown_role(environment: dict[str, str]) -> None:
    """--role takes only manager, viewer or admin."""
    result = CliRunner().invoke(
        main,
        ["users", "add", "ann", "--farm", "Hill", "--role", "owner"],
        env=environment,
    )
    assert result.exit_code == 2 and "manager" in result.output


def test_without_database_commands_say_what_to_do(
    environment: dict[str, str], tmp_path: Path
) -> None:
    """No URL and no farmeye up: exit 1 naming both remedies."""
    environment["FARMEYE_DATABASE_URL"] = ""
    result = farmeye(environment, "devices", "list")
    assert result.exit_code == 1
    assert "start `farmeye up` or set FARMEYE_DATABASE_URL" in result.output


def test_commands_find_database_of_running_up(
    environment: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    """With no URL set, the run.json of a live farmeye up is used."""
    environment["FARMEYE_DATABASE_URL"] = ""
    config.write_run_info(tmp_path, {"database_url": db_url, "redis_url": "redis://"})
    result = farmeye(environment, "devices", "list", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_config_file_names_the_database(
    environment: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    """--config FILE is read like FARMEYE_* variables."""
    config_file = tmp_path / "farmeye.yaml"
    config_file.write_text(f"database_url: {db_url}\n", encoding="utf-8")
    environment.pop("FARMEYE_DATABASE_URL")
    result = farmeye(environment, "devices", "list", "--config", str(config_file))
    assert result.exit_code == 0, result.output


def test_bad_config_file_is_reported(
    environment: dict[str, str], tmp_path: Path
) -> None:
    """An unknown key in --config exits 1 naming the key."""
    config_file = tmp_path / "farmeye.yaml"
    config_file.write_text("databse_url: x\n", encoding="utf-8")
    result = farmeye(environment, "devices", "list", "--config", str(config_file))
    assert result.exit_code == 1 and "'databse_url'" in result.output


def test_db_migrate_reports_up_to_date(environment: dict[str, str]) -> None:
    """db migrate on a migrated database applies nothing and says so."""
    result = farmeye(environment, "db", "migrate")
    assert result.exit_code == 0, result.output
    assert "is up to date" in result.stdout
    assert db.redact(environment["FARMEYE_DATABASE_URL"]) in result.stdout


def test_db_migrate_applies_to_empty_database(
    environment: dict[str, str], database_url: str
) -> None:
    """db migrate names each migration it applies."""
    name = f"test_{secrets.token_hex(6)}"
    admin = db.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        environment["FARMEYE_DATABASE_URL"] = db.replace_database(database_url, name)
        result = farmeye(environment, "db", "migrate")
        assert result.stdout.splitlines()[:2] == [
            "applied 001_initial",
            "applied 002_heatmap_maps",
        ]
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_unreachable_database_is_reported(environment: dict[str, str]) -> None:
    """A database that refuses connections exits 1 saying where, no password."""
    environment["FARMEYE_DATABASE_URL"] = "postgresql://u:hunter2@127.0.0.1:1/x"
    result = farmeye(environment, "devices", "list")
    assert result.exit_code == 1
    assert "cannot connect to PostgreSQL at postgresql://u:***@127.0.0.1:1/x" in (
        result.output
    )


def test_role_choices_match_the_database() -> None:
    """The CLI offers exactly the roles the schema accepts."""
    assert admin.ROLE_CHOICES == db.ROLES
