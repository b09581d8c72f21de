"""Migrations, the capture key, credentials storage and the admin helpers."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from farmeye import auth, db

SHA = "ab" * 32


@pytest.fixture
def empty_db_url(database_url: str) -> Iterator[str]:
    """A database with no tables at all, for migration tests."""
    name = f"test_{secrets.token_hex(6)}"
    admin_sql(database_url, f'CREATE DATABASE "{name}"')
    yield db.replace_database(database_url, name)
    admin_sql(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def conn(db_url: str) -> Iterator[Any]:
    connection = db.connect(db_url)
    yield connection
    connection.close()


def admin_sql(url: str, statement: str) -> None:
    connection = db.connect(url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(statement)
    connection.close()


def fetch(connection: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with connection, connection.cursor() as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


def test_migrate_applies_then_does_nothing(empty_db_url: str) -> None:
    """A second migrate finds nothing left to apply."""
    shipped = [version for version, _ in db.migration_files()]
    assert shipped[:2] == ["001_initial", "002_heatmap_maps"]
    assert db.migrate(empty_db_url) == shipped
    assert db.migrate(empty_db_url) == []
    connection = db.connect(empty_db_url)
    assert db.applied_migrations(connection) == shipped
    connection.close()


def test_concurrent_migrations_apply_each_once(empty_db_url: str) -> None:
    """Processes starting together apply every migration exactly once."""
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(db.migrate(empty_db_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors
    shipped = [version for version, _ in db.migration_files()]
    assert sorted(results) == [[], [], [], shipped]


def test_failed_migration_is_rolled_back(empty_db_url: str, tmp_path: Path) -> None:
    """A migration that fails leaves neither its tables nor its version."""
    (tmp_path / "001_first.sql").write_text("CREATE TABLE first (n int);")
    (tmp_path / "002_broken.sql").write_text(
        "CREATE TABLE second (n int); SELECT no_such_function();"
    )

    with pytest.raises(db.DatabaseError, match="002_broken.sql failed"):
        db.migrate(empty_db_url, tmp_path)

    connection = db.connect(empty_db_url)
    assert db.applied_migrations(connection) == ["001_first"]
    assert fetch(connection, "SELECT to_regclass('second') IS NULL") == [(True,)]
    connection.close()


def test_misnamed_migration_is_refused(tmp_path: Path) -> None:
    """A .sql file not named NNN_name.sql is an error, not silently skipped."""
    (tmp_path / "initial.sql").write_text("SELECT 1;")
    with pytest.raises(db.DatabaseError, match="NNN_name.sql"):
        db.migration_files(tmp_path)


def test_migrations_are_found_in_order() -> None:
    """The shipped migrations are found, numbered and in order."""
    versions = [version for version, _ in db.migration_files()]
    assert versions[0] == "001_initial"
    assert versions == sorted(versions)


def insert_capture(connection: Any, device_id: str, coop_id: int, farm_id: int) -> Any:
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO captures (device_id, coop_id, farm_id, sha256, size_bytes,"
            " content_type, captured_at, storage_key)"
            " VALUES (%s, %s, %s, %s, 10, 'image/jpeg', now(), 'k')"
            " ON CONFLICT (device_id, sha256) DO NOTHING RETURNING id",
            (device_id, coop_id, farm_id, SHA),
        )
        return cursor.fetchone()


def test_capture_key_makes_retries_idempotent(conn: Any) -> None:
    """The same photo from the same device lands on one row, pending dispatch."""
    device = db.add_device(conn, "cam", "coop A", "farm", iterations=10_000)

    first = insert_capture(conn, device.device_id, device.coop_id, device.farm_id)
    again = insert_capture(conn, device.device_id, device.coop_id, device.farm_id)

    assert first is not None and again is None
    assert fetch(conn, "SELECT dispatch_state FROM captures") == [("pending",)]


def test_capture_rejects_unknown_dispatch_state(conn: Any) -> None:
    """dispatch_state only takes the four documented values."""
    device = db.add_device(conn, "cam", "coop A", "farm", iterations=10_000)
    insert_capture(conn, device.device_id, device.coop_id, device.farm_id)
    with pytest.raises(psycopg2.errors.CheckViolation):
        fetch(conn, "UPDATE captures SET dispatch_state = 'lost' RETURNING id")


def test_failed_analysis_must_say_why(conn: Any) -> None:
    """An analysis row with status failed needs an error message."""
    device = db.add_device(conn, "cam", "coop A", "farm", iterations=10_000)
    (capture_id,) = insert_capture(
        conn, device.device_id, device.coop_id, device.farm_id
    )
    with pytest.raises(psycopg2.errors.CheckViolation):
        fetch(
            conn,
            "INSERT INTO analyses (capture_id, model_version, status)"
            " VALUES (%s, 'v1', 'failed') RETURNING id",
            capture_id,
        )


def test_device_verifier_is_stored_not_secret(conn: Any) -> None:
    """Only salt and PBKDF2 verifier are kept; they answer the secret's proof."""
    device = db.add_device(conn, "cam", "coop A", "farm")

    [(salt, verifier, iterations)] = fetch(
        conn, "SELECT salt, verifier, iterations FROM devices"
    )
    row_text = str(fetch(conn, "SELECT * FROM devices"))

    assert device.secret not in row_text
    assert bytes(verifier) == auth.make_verifier(device.secret, salt, iterations)[1]
    nonce = auth.new_nonce()
    proof = auth.DeviceCredentials(device.device_id, device.secret).answer(
        nonce, salt, iterations
    )
    assert auth.check_proof(bytes(verifier), nonce, proof)


def test_add_device_creates_farm_and_coop_once(conn: Any) -> None:
    """Farm and coop are created on first use and reused after."""
    first = db.add_device(conn, "cam1", "coop A", "farm", iterations=10_000)
    second = db.add_device(conn, "cam2", "coop A", "farm", iterations=10_000)
    assert (first.farm_id, first.coop_id) == (second.farm_id, second.coop_id)
    assert first.device_id != second.device_id


def test_device_without_farm_uses_the_only_farm(conn: Any) -> None:
    """No farm given: the default farm, then the only one, then an error."""
    device = db.add_device(conn, "cam1", "coop A", iterations=10_000)
    assert db.list_devices(conn)[0].farm == db.DEFAULT_FARM

    db.ensure_farm(conn, "second farm")
    with pytest.raises(db.DatabaseError, match="several farms"):
        db.add_device(conn, "cam2", "coop A", iterations=10_000)
    assert device.farm_id == db.ensure_farm(conn, db.DEFAULT_FARM)


def test_revoke_device_reports_each_case(conn: Any) -> None:
    """Revoking marks once, repeats harmlessly and names an unknown id."""
    device = db.add_device(conn, "cam", "coop A", "farm", iterations=10_000)
    assert db.revoke_device(conn, device.device_id) is True
    assert db.revoke_device(conn, device.device_id) is False
    assert db.list_devices(conn)[0].revoked_at is not None
    with pytest.raises(db.NotFound, match="dev_missing"):
        db.revoke_device(conn, "dev_missing")


def test_rotate_device_secret_replaces_verifier(conn: Any) -> None:
    """A new secret verifies; the old one no longer does."""
    device = db.add_device(conn, "cam", "coop A", "farm", iterations=10_000)

    secret = db.rotate_device_secret(conn, device.device_id, iterations=10_000)

    [(salt, verifier, iterations)] = fetch(
        conn, "SELECT salt, verifier, iterations FROM devices"
    )
    assert bytes(verifier) == auth.make_verifier(secret, salt, iterations)[1]
    assert bytes(verifier) != auth.make_verifier(device.secret, salt, iterations)[1]
    db.revoke_device(conn, device.device_id)
    with pytest.raises(db.NotFound, match="revoked"):
        db.rotate_device_secret(conn, device.device_id)


def test_user_token_is_stored_as_hash_only(conn: Any) -> None:
    """The token finds its user, and only its hash is in the table."""
    user = db.add_user(conn, "alice", "farm", "manager")

    assert db.user_for_token(conn, user.token) == db.User(user.user_id, "alice")
    assert db.user_for_token(conn, user.token + "x") is None
    assert user.token not in str(fetch(conn, "SELECT * FROM users"))


def test_adding_user_again_adds_farm_and_rotates_token(conn: Any) -> None:
    """A second add gives a second farm and a new token; the old one dies."""
    first = db.add_user(conn, "alice", "north", "viewer")
    second = db.add_user(conn, "alice", "south", "admin")

    assert (second.user_id, second.replaced, first.replaced) == (
        first.user_id,
        True,
        False,
    )
    assert db.user_for_token(conn, first.token) is None
    memberships = db.farms_of_user(conn, first.user_id)
    assert [(m.farm, m.role) for m in memberships] == [
        ("north", "viewer"),
        ("south", "admin"),
    ]


def test_unknown_role_is_refused(conn: Any) -> None:
    """Roles outside manager, viewer and admin are refused before writing."""
    with pytest.raises(db.DatabaseError, match="unknown role 'owner'"):
        db.add_user(conn, "alice", "farm", "owner")
    assert fetch(conn, "SELECT count(*) FROM users") == [(0,)]


def test_unreachable_server_error_hides_password() -> None:
    """A refused connection says where, without the password."""
    url = "postgresql://farmeye:hunter2@127.0.0.1:1/farmeye"
    with pytest.raises(db.DatabaseUnavailable) as caught:
        db.connect(url, connect_timeout_s=2)
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


def test_url_helpers() -> None:
    """redact hides the password; replace_database swaps only the name."""
    url = "postgresql://u:p%40ss@h:5432/one?sslmode=require"
    assert db.redact(url) == "postgresql://u:***@h:5432/one?sslmode=require"
    assert db.replace_database(url, "two") == (
        "postgresql://u:p%40ss@h:5432/two?sslmode=require"
    )
