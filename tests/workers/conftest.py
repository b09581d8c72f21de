"""Fixtures for worker tests: a database and Redis database per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.databases import fresh_database

DATASET_SICK_FOLDERS = ("coccidiosis", "salmonella", "newcastle")


@pytest.fixture(scope="module")
def module_db_url(database_url: str) -> Iterator[str]:
    """A migrated database shared by the tests of one module (one worker)."""
    with fresh_database(database_url, "workers") as url:
        yield url


@pytest.fixture(scope="module")
def module_redis_url(redis_url: str) -> Iterator[str]:
    """The last logical database of the session's Redis, emptied for a module."""
    client = redis.Redis.from_url(redis_url)
    try:
        try:
            count = int(str(client.config_get("databases")["databases"]))
        except (redis.RedisError, KeyError, ValueError):
            count = 16
    finally:
        client.close()
    url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{count - 1}"))
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        yield url
        client.flushdb()
    finally:
        client.close()


@pytest.fixture(scope="session")
def sick_photos(shared_dir: Path) -> list[bytes]:
    """A few photos of sick droppings from the dataset, or none without it."""
    root = shared_dir / "datasets" / "poultry-droppings"
    photos = []
    for folder in DATASET_SICK_FOLDERS:
        photos += [p.read_bytes() for p in sorted((root / folder).glob("*.jpg"))[:2]]
    return photos
