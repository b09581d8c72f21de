"""Helpers for hub tests: a running hub, registered devices, photos, streams."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from websockets.asyncio.client import ClientConnection, connect

from farmeye import auth, db
from farmeye.auth import DeviceCredentials
from farmeye.config import Settings
from farmeye.device_client import DeviceClient
from hub.server import Hub


@dataclass(frozen=True)
class Camera:
    """A registered device: what a camera is given at install time."""

    device_id: str
    secret: str
    farm_id: int
    coop_id: int

    @property
    def credentials(self) -> DeviceCredentials:
        return DeviceCredentials(self.device_id, self.secret)


def add_camera(db_url: str, coop: str = "coop-1", farm: str = "farm-a") -> Camera:
    """Register a device with the fewest PBKDF2 rounds, so tests stay quick."""
    connection = db.connect(db_url)
    try:
        new = db.add_device(
            connection,
            f"cam-{secrets.token_hex(3)}",
            coop,
            farm,
            iterations=auth.MIN_ITERATIONS,
        )
    finally:
        connection.close()
    return Camera(new.device_id, new.secret, new.farm_id, new.coop_id)


def add_user(db_url: str, name: str, farm: str, role: str = "manager") -> str:
    """Create a user in ``farm`` and return its token."""
    connection = db.connect(db_url)
    try:
        return db.add_user(connection, name, farm, role).token
    finally:
        connection.close()


def sql(db_url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement and return its rows (empty for commands)."""
    connection = db.connect(db_url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement, args)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        connection.close()


def photo(seed: int = 0, size: tuple[int, int] = (320, 240)) -> bytes:
    """A small synthetic JPEG, different for each seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, (150 + rng.randrange(60), 120, 80))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        r = rng.randrange(5, 30)
        colour = (rng.randrange(60, 120), rng.randrange(40, 90), 30)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def hub_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a hub on free local ports with a small triage pool."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "ingest_host": "127.0.0.1",
        "ingest_port": 0,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "triage_processes": 1,
        "handshake_timeout_s": 2.0,
        "idle_timeout_s": 30.0,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_hub(
    settings: Settings, db_url: str, redis_url: str, **options: Any
) -> AsyncIterator[Hub]:
    """A started hub on its own event channel, stopped on exit."""
    options.setdefault("events_channel", f"test-events:{secrets.token_hex(4)}")
    hub = Hub(settings, db_url, redis_url, **options)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


def ingest_of(hub: Hub) -> tuple[str, int]:
    assert hub.ingest_address is not None
    return hub.ingest_address


def http_of(hub: Hub) -> str:
    assert hub.http_address is not None
    host, port = hub.http_address
    return f"http://{host}:{port}"


def client_for(hub: Hub, camera: Camera, **options: Any) -> DeviceClient:
    host, port = ingest_of(hub)
    return DeviceClient(camera.credentials, host, port, **options)


@contextlib.asynccontextmanager
async def event_stream(
    hub: Hub, token: str, query: str = ""
) -> AsyncIterator[ClientConnection]:
    """An open WebSocket event stream of ``hub``."""
    url = http_of(hub).replace("http://", "ws://") + f"/ws/events?token={token}"
    async with connect(url + query, compression=None) as websocket:
        yield websocket


async def next_event(
    websocket: ClientConnection, type: str, timeout_s: float = 20.0, **match: Any
) -> dict[str, Any]:
    """The next event of ``type`` whose fields equal ``match``."""
    async with asyncio.timeout(timeout_s):
        while True:
            event = json.loads(await websocket.recv())
            if event["type"] == type and all(
                event.get(k) == v for k, v in match.items()
            ):
                return event  # type: ignore[no-any-return]


async def wait_for(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll ``check`` until it holds."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.1)


async def http_get(
    hub: Hub,
    path: str,
    token: str | None = None,
    method: str = "GET",
    body: Any = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to the hub: ``(status, headers, body)``."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(http_of(hub) + path, method=method)  # noqa: S310
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")

    def call() -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(request, data, timeout=10) as response:  # noqa: S310
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    return await asyncio.get_running_loop().run_in_executor(None, call)


class HubThread:
    """A hub on an event loop of its own thread, for tests that run commands."""

    def __init__(self, settings: Settings, db_url: str, redis_url: str) -> None:
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.hub = Hub(
            settings,
            db_url,
            redis_url,
            events_channel=f"test-events:{secrets.token_hex(4)}",
        )
        self.call(self.hub.start())

    def call(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the hub's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(60)

    @property
    def ingest(self) -> str:
        host, port = ingest_of(self.hub)
        return f"{host}:{port}"

    def stop(self) -> None:
        self.call(self.hub.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
