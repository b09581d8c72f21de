"""Faults around the hub: a SIGKILL right after an ack, Redis going away,
PostgreSQL restarting. Nothing acknowledged is lost and cameras carry on."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import redis

from farmeye.device_client import Ack, DeviceClient, HubError, LinkClosed
from farmeye.embedded import EmbeddedPostgres, EmbeddedRedis
from hub.dispatch import queue_keys
from hub.store import DiskImageStore
from tests.hub.support import (
    Camera,
    add_camera,
    add_user,
    client_for,
    event_stream,
    hub_settings,
    next_event,
    photo,
    running_hub,
    sql,
    wait_for,
)

HUB_LINE = re.compile(r"hub: ingest (\S+):(\d+) http (\S+)")


def start_hub_process(
    data_dir: Path, db_url: str, redis_url: str
) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    """`farmeye hub` in its own process group; returns it and its ingest address."""
    env = dict(
        os.environ,
        FARMEYE_DATABASE_URL=db_url,
        FARMEYE_REDIS_URL=redis_url,
        FARMEYE_DATA_DIR=str(data_dir),
        FARMEYE_INGEST_HOST="127.0.0.1",
        FARMEYE_INGEST_PORT="0",
        FARMEYE_HTTP_HOST="127.0.0.1",
        FARMEYE_HTTP_PORT="0",
        FARMEYE_TRIAGE_PROCESSES="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "farmeye.cli", "hub"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = HUB_LINE.search(line)
    assert match, f"hub printed {line!r}"
    return process, (match.group(1), int(match.group(2)))


def test_acked_upload_survives_sigkill_of_the_hub(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """Every photo acked before a SIGKILL has its row and file after restart."""
    camera = add_camera(db_url)
    photos = [photo(seed) for seed in range(6)]

    async def upload_then_kill(process: subprocess.Popen[str], address) -> list[Ack]:
        client = DeviceClient(camera.credentials, *address)
        await client.connect()
        acks = await asyncio.gather(*(client.upload(data) for data in photos))
        os.killpg(process.pid, signal.SIGKILL)
        await client.close()
        return list(acks)

    process, address = start_hub_process(tmp_path, db_url, redis_db_url)
    acks = asyncio.run(upload_then_kill(process, address))
    process.wait(timeout=10)

    store = DiskImageStore(tmp_path)
    for ack, data in zip(acks, photos, strict=True):
        sha = hashlib.sha256(data).hexdigest()
        rows = sql(db_url, "SELECT sha256 FROM captures WHERE id = %s", ack.capture_id)
        assert rows == [(sha,)]
        assert store.get(sha) == data

    process, address = start_hub_process(tmp_path, db_url, redis_db_url)
    try:
        again = asyncio.run(upload_once(camera, address, photos[0]))
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert (again.capture_id, again.duplicate) == (acks[0].capture_id, True)
    assert process.returncode == 0


async def upload_once(camera: Camera, address: tuple[str, int], data: bytes) -> Ack:
    async with DeviceClient(camera.credentials, *address) as client:
        return await client.upload(data)


def test_capture_stays_pending_while_redis_is_down_and_is_sent_after(
    tmp_path: Path, db_url: str
) -> None:
    """With Redis down uploads are acked and kept pending, then queued and relayed."""
    camera = add_camera(db_url)
    token = add_user(db_url, "ann", "farm-a")
    broker = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    broker.start()

    def state(capture_id: int) -> str:
        rows = sql(
            db_url, "SELECT dispatch_state FROM captures WHERE id = %s", capture_id
        )
        return str(rows[0][0])

    def triaged(capture_id: int) -> bool:
        query = "SELECT count(*) FROM triage_results WHERE capture_id = %s"
        return sql(db_url, query, capture_id) == [(1,)]

    async def scenario() -> tuple[str, str, dict]:
        settings = hub_settings(tmp_path / "hub")
        quick = {"redispatch_interval_s": 0.3, "pending_grace_s": 0.0}
        async with running_hub(settings, db_url, broker.redis_url, **quick) as hub:
            await asyncio.get_running_loop().run_in_executor(None, broker.stop)
            async with client_for(hub, camera) as client:
                capture_id = (await client.upload(photo(3))).capture_id
            await wait_for(lambda: triaged(capture_id))
            while_down = state(capture_id)
            await asyncio.get_running_loop().run_in_executor(None, broker.restart)
            await wait_for(lambda: state(capture_id) == "queued")
            await asyncio.wait_for(hub.bus.wait_relaying(30), 30)
            async with event_stream(hub, token) as stream:
                async with client_for(hub, camera) as client:
                    later = (await client.upload(photo(4))).capture_id
                event = await next_event(stream, "triage", capture_id=later)
            return while_down, state(capture_id), event

    try:
        while_down, after, event = asyncio.run(scenario())
        queued = redis.Redis.from_url(broker.redis_url)
        lengths = [queued.llen(key) for key in queue_keys()]
        queued.close()
    finally:
        broker.stop()
    assert (while_down, after) == ("pending", "queued")
    assert sum(lengths) == 2
    assert event["type"] == "triage"


async def upload_until_acked(
    client_factory: Callable[[], DeviceClient], photos: list[bytes]
) -> list[Ack]:
    """Upload like a camera agent: reconnect and retry until each photo is acked."""
    acks: list[Ack] = []
    client: DeviceClient | None = None
    for data in photos:
        while True:
            try:
                if client is None:
                    client = client_factory()
                    await client.connect()
                acks.append(await client.upload(data))
                break
            except (HubError, LinkClosed, OSError) as exc:
                if isinstance(exc, HubError) and not exc.retryable:
                    raise
                if not isinstance(exc, HubError) and client is not None:
                    await client.close()
                    client = None
                await asyncio.sleep(0.2)
    if client is not None:
        await client.close()
    return acks


def test_postgres_restart_is_ridden_out(tmp_path: Path, redis_db_url: str) -> None:
    """A PostgreSQL restart mid-stream costs retries, not photos."""
    from farmeye import db

    server = EmbeddedPostgres(tmp_path / "postgres", fsync=False)
    server.start()
    try:
        db.migrate(server.database_url)
        camera = add_camera(server.database_url)
        photos = [photo(seed) for seed in range(8)]

        async def scenario() -> list[Ack]:
            settings = hub_settings(tmp_path / "hub")
            async with running_hub(settings, server.database_url, redis_db_url) as hub:
                first = await upload_until_acked(
                    lambda: client_for(hub, camera), photos[:4]
                )
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, server.restart)
                rest = await upload_until_acked(
                    lambda: client_for(hub, camera), photos[4:]
                )
                return first + rest

        acks = asyncio.run(scenario())
        ids = {
            capture_id
            for (capture_id,) in sql(server.database_url, "SELECT id FROM captures")
        }
    finally:
        server.stop()
    assert {ack.capture_id for ack in acks} == ids
    assert len(ids) == len(photos)
