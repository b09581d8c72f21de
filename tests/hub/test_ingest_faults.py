"""Bad input and hostile peers on the ingest port: each gets a clear error
frame or a timeout, one WARNING line naming the peer, and never disturbs the
other cameras."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from farmeye import protocol
from farmeye.device_client import HubError
from hub.server import Hub
from hub.store import DiskImageStore
from tests.hub.support import (
    Camera,
    add_camera,
    client_for,
    http_get,
    hub_settings,
    ingest_of,
    photo,
    running_hub,
    sql,
)

HELLO_TIMEOUT_S = 1.0


async def exchange(
    hub: Hub, *chunks: bytes, half_close: bool = False
) -> tuple[str, list[protocol.Frame]]:
    """Send raw bytes; return our address and the frames the hub sent back."""
    reader, writer = await asyncio.open_connection(*ingest_of(hub))
    host, port = writer.get_extra_info("sockname")[:2]
    local = f"{host}:{port}"
    for chunk in chunks:
        writer.write(chunk)
    if half_close:
        writer.write_eof()
    received = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return local, protocol.FrameDecoder().feed(received)


def frame_bytes(header: dict, payload: bytes = b"") -> bytes:
    """A frame with a header that skips validation, as a buggy device sends."""
    return protocol.encode(header, payload, validate=False)


def png_bomb(side: int = 50_000) -> bytes:
    """A tiny PNG whose header claims ``side`` x ``side`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """WARNING lines that mention ``text`` (a peer address or an error code)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


async def with_steady_camera(
    hub: Hub, camera: Camera, fault: Callable[[], Awaitable[object]]
) -> tuple[object, int]:
    """Run ``fault`` while ``camera`` keeps uploading; (fault result, acks)."""
    stop = asyncio.Event()
    acks = 0

    async def upload_steadily() -> None:
        nonlocal acks
        async with client_for(hub, camera) as client:
            seed = 1000
            while not stop.is_set() or acks == 0:
                await client.upload(photo(seed))
                acks += 1
                seed += 1
                await asyncio.sleep(0.05)

    uploader = asyncio.create_task(upload_steadily())
    try:
        result = await fault()
    finally:
        stop.set()
    await uploader
    return result, acks


PRE_AUTH_FAULTS = {
    "garbage": ([b"GET / HTTP/1.1\r\n\r\n"], False, "bad_magic"),
    "4GB payload": (
        [protocol.PREFIX.pack(b"FE", 1, 0, 20, 0xFFFFFFFF)],
        False,
        "payload_too_large",
    ),
    "schema-breaking header": (
        [frame_bytes({"type": "hello", "device_id": "not-a-device"})],
        False,
        "schema",
    ),
    "truncated frame": (
        [protocol.PREFIX.pack(b"FE", 1, 0, 100, 0) + b'{"type":'],
        True,
        "truncated",
    ),
}


@pytest.mark.parametrize("fault", sorted(PRE_AUTH_FAULTS))
def test_bad_frame_gets_error_frame_and_one_warning(
    fault: str,
    tmp_path: Path,
    db_url: str,
    redis_db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A malformed frame gets its error code and one WARNING; others upload on."""
    chunks, half_close, code = PRE_AUTH_FAULTS[fault]
    camera = add_camera(db_url)
    caplog.set_level(logging.INFO)

    async def scenario() -> tuple[object, int]:
        settings = hub_settings(tmp_path)
        async with running_hub(settings, db_url, redis_db_url) as hub:
            return await with_steady_camera(
                hub, camera, lambda: exchange(hub, *chunks, half_close=half_close)
            )

    (peer, frames), acks = asyncio.run(scenario())  # type: ignore[misc]
    assert [f.header["code"] for f in frames] == [code]
    assert frames[0].header["retryable"] is protocol.ERROR_CODES[code]
    assert len(warnings_about(caplog, peer)) == 1
    assert acks >= 1


@pytest.mark.parametrize("case", ["wrong secret", "revoked", "unknown device"])
def test_refused_device_gets_auth_failed(
    case: str,
    tmp_path: Path,
    db_url: str,
    redis_db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong secret, a revoked or unknown device gets auth_failed, not retryable."""
    camera = add_camera(db_url)
    intruder = add_camera(db_url)
    if case == "wrong secret":
        intruder = Camera(intruder.device_id, "not-the-secret", 0, 0)
    elif case == "revoked":
        sql(
            db_url,
            "UPDATE devices SET revoked_at = now() WHERE id = %s",
            intruder.device_id,
        )
    else:
        intruder = Camera("dev_unknown000000", "whatever", 0, 0)

    async def scenario() -> tuple[object, int]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:

            async def intrude() -> HubError:
                with pytest.raises(HubError) as refused:
                    await client_for(hub, intruder).connect()
                return refused.value

            return await with_steady_camera(hub, camera, intrude)

    error, acks = asyncio.run(scenario())
    assert isinstance(error, HubError)
    assert (error.code, error.retryable) == ("auth_failed", False)
    assert len(warnings_about(caplog, "auth_failed")) == 1
    assert acks >= 1


@pytest.mark.parametrize("payload", ["not an image", "decompression bomb"])
def test_bad_photo_is_refused_and_link_stays_open(
    payload: str,
    tmp_path: Path,
    db_url: str,
    redis_db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A payload that is no usable photo gets bad_image; the next upload works."""
    camera = add_camera(db_url)
    data = (
        b"%PDF-1.7 certainly not a photo" if payload == "not an image" else png_bomb()
    )

    async def scenario() -> tuple[HubError, int]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with client_for(hub, camera) as client:
                with pytest.raises(HubError) as refused:
                    await client.upload(data, content_type="image/png")
                ack = await client.upload(photo(5))
            return refused.value, ack.capture_id

    error, capture_id = asyncio.run(scenario())
    assert (error.code, error.retryable) == ("bad_image", False)
    assert capture_id >= 1
    assert len(warnings_about(caplog, "bad_image")) == 1
    assert sql(db_url, "SELECT count(*) FROM captures") == [(1,)]


def test_thousand_silent_connections_time_out(
    tmp_path: Path, db_url: str, redis_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """1000 peers that never speak each get handshake_timeout; cameras carry on."""
    camera = add_camera(db_url)
    caplog.set_level(logging.WARNING)

    async def silent_peers(hub: Hub) -> list[list[protocol.Frame]]:
        connections = [
            await asyncio.open_connection(*ingest_of(hub)) for _ in range(1000)
        ]
        answers = await asyncio.gather(
            *(asyncio.wait_for(reader.read(), 30) for reader, _ in connections)
        )
        for _, writer in connections:
            writer.close()
        return [protocol.FrameDecoder().feed(answer) for answer in answers]

    async def scenario() -> tuple[object, int]:
        settings = hub_settings(tmp_path, handshake_timeout_s=HELLO_TIMEOUT_S)
        async with running_hub(settings, db_url, redis_db_url) as hub:
            return await with_steady_camera(hub, camera, lambda: silent_peers(hub))

    answers, acks = asyncio.run(scenario())
    assert isinstance(answers, list) and len(answers) == 1000
    assert all(
        [f.header["code"] for f in frames] == ["handshake_timeout"]
        for frames in answers
    )
    timeouts = [r for r in caplog.records if "handshake_timeout" in r.getMessage()]
    assert len(timeouts) == 1000
    assert acks >= 1


def test_full_disk_refuses_photos_retryably_until_there_is_room(
    tmp_path: Path,
    db_url: str,
    redis_db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Below its free-space reserve the hub refuses new photos with a retryable
    storage_unavailable, keeps no row for them and reports the disk in health;
    once there is room the same photo is taken."""
    camera = add_camera(db_url)
    data = photo(7)
    settings = hub_settings(tmp_path, min_free_bytes=2**62)

    async def scenario() -> tuple[list[HubError], int, dict, dict, int]:
        async with running_hub(settings, db_url, redis_db_url) as hub:
            async with client_for(hub, camera) as client:
                refused = []
                for _ in range(3):
                    with pytest.raises(HubError) as error:
                        await client.upload(data)
                    refused.append(error.value)
                status, _, full = await http_get(hub, "/healthz")
                hub.store.min_free_bytes = 0  # as if old photos had been moved off
                ack = await client.upload(data)
                _, _, roomy = await http_get(hub, "/healthz")
        return refused, status, json.loads(full), json.loads(roomy), ack.capture_id

    refused, status, full, roomy, capture_id = asyncio.run(scenario())
    assert {(e.code, e.retryable) for e in refused} == {("storage_unavailable", True)}
    assert "disk is full" in refused[0].message
    assert (status, full["status"]) == (503, "degraded")
    assert full["checks"]["disk"].startswith("full: ")
    assert (roomy["status"], roomy["checks"]["disk"]) == ("ok", "ok")
    assert sql(db_url, "SELECT id FROM captures") == [(capture_id,)]
    assert DiskImageStore(tmp_path).get(hashlib.sha256(data).hexdigest()) == data
    refusals = [r for r in caplog.records if "refusing new photos" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
