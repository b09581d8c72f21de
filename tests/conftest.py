"""Fixtures every test may use: real PostgreSQL and Redis, isolated per test.

With no environment variables the servers are the embedded ones, started
once per session in a temporary folder, so a fresh machine passes; they end
with the test session even when it is killed. Set
``FARMEYE_TEST_DATABASE_URL`` and ``FARMEYE_TEST_REDIS_URL`` to use existing
servers instead (CI does). Each test then gets its own database and its own
Redis logical database, so tests never see each other's rows or keys.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.databases import fresh_database

DATASET_NAME = "poultry-droppings"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``shared`` folder next to the checkout (datasets, pretrained weights)."""
    return Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def dataset_dir(shared_dir: Path) -> Path:
    """The labelled photos; tests needing them skip on machines without them."""
    path = shared_dir / "datasets" / DATASET_NAME
    if not path.is_dir():
        pytest.skip(f"dataset {DATASET_NAME} not found at {path}")
    return path


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the session: $FARMEYE_TEST_DATABASE_URL or embedded."""
    external = os.environ.get("FARMEYE_TEST_DATABASE_URL")
    if external:
        yield external
        return

    from farmeye.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(
        tmp_path_factory.mktemp("postgres"), fsync=False, die_with_parent=True
    )
    server.start()
    try:
        yield server.database_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the session: $FARMEYE_TEST_REDIS_URL or embedded."""
    external = os.environ.get("FARMEYE_TEST_REDIS_URL")
    if external:
        yield external
        return

    from farmeye.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), die_with_parent=True)
    server.start()
    try:
        yield server.redis_url
    finally:
        server.stop()


@pytest.fixture
def db_url(database_url: str) -> Iterator[str]:
    """A fresh, migrated database of its own for one test, dropped afterwards."""
    with fresh_database(database_url, "test") as url:
        yield url


# Start at a random logical database so that two sessions sharing one
# external Redis rarely pick the same one at the same time.
_redis_db_numbers = itertools.count(random.randrange(1_000))


@pytest.fixture
def redis_db_url(redis_url: str) -> Iterator[str]:
    """``redis_url`` pointing at a logical database emptied for this test.

    Database 0 is left to people poking at the server. Pub/sub channels are
    shared by all logical databases, so tests that publish should use
    channel names of their own.
    """
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        databases = _logical_databases(client)
    finally:
        client.close()
    number = 1 + next(_redis_db_numbers) % (databases - 1)
    url = _with_redis_db(redis_url, number)

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        yield url
        client.flushdb()
    finally:
        client.close()


def _logical_databases(client: Any) -> int:
    try:
        return max(2, int(client.config_get("databases")["databases"]))
    except Exception:  # managed servers may refuse CONFIG; 16 is the default
        return 16


def _with_redis_db(url: str, number: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{number}"))


@pytest.fixture
def embedded_services_factory(
    tmp_path: Path,
) -> Iterator[Callable[..., Any]]:
    """Start embedded servers of one's own (e.g. ``appendonly=True``) per test.

    Each call gets its own data folder and ports; all are stopped at the end.
    """
    from farmeye.embedded import EmbeddedServices

    started: list[EmbeddedServices] = []

    def start(**options: Any) -> EmbeddedServices:
        options.setdefault("fsync", False)
        options.setdefault("die_with_parent", True)
        services = EmbeddedServices(tmp_path / f"farmeye-{len(started)}", **options)
        started.append(services)
        return services.start()

    try:
        yield start
    finally:
        for services in reversed(started):
            services.stop()


@pytest.fixture
def embedded_services(embedded_services_factory: Callable[..., Any]) -> Any:
    """Embedded PostgreSQL and Redis of this test alone, free to restart or kill."""
    return embedded_services_factory()
