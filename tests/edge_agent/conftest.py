"""Fixtures of the agent tests: a real hub process on a fresh database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.edge_agent.support import Camera, HubProcess, add_camera


@pytest.fixture
def hub_process(tmp_path: Path, db_url: str, redis_db_url: str) -> Iterator[HubProcess]:
    """A started ``farmeye hub`` on its own database, stopped afterwards."""
    hub = HubProcess(tmp_path, db_url, redis_db_url)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def camera(db_url: str) -> Camera:
    """A registered device."""
    return add_camera(db_url)
