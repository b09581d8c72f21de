"""The shared fixtures themselves: isolation of databases and Redis keys."""

from __future__ import annotations

from pathlib import Path

import redis

from farmeye import db


def test_db_url_is_a_fresh_migrated_database(db_url: str, database_url: str) -> None:
    """Each test gets its own database, already migrated and empty."""
    connection = db.connect(db_url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT current_database(), count(*) FROM devices")
            name, devices = cursor.fetchone() or (None, None)
        shipped = [version for version, _ in db.migration_files()]
        assert db.applied_migrations(connection) == shipped
    finally:
        connection.close()
    assert name is not None and name.startswith("test_")
    assert devices == 0
    assert db_url != database_url


def test_redis_db_url_is_an_empty_database_of_its_own(redis_db_url: str) -> None:
    """Each test gets an emptied logical database other than 0."""
    client = redis.Redis.from_url(redis_db_url)
    try:
        assert client.connection_pool.connection_kwargs["db"] != 0
        assert client.dbsize() == 0
        client.set("left-behind", "1")
    finally:
        client.close()


def test_shared_dir_is_beside_the_checkout(shared_dir: Path) -> None:
    """shared_dir points at the folder beside the repository."""
    assert shared_dir.name == "shared"
    assert shared_dir.parent == Path(__file__).resolve().parents[2]
