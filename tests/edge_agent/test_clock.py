"""Capture times on the hub's clock when the camera's clock is wrong."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.clock import HubClock
from edge_agent.config import load_config
from farmeye import protocol
from farmeye.auth import DeviceCredentials
from farmeye.device_client import DeviceClient, parse_address
from tests.edge_agent.support import (
    Camera,
    HubProcess,
    agent_config,
    sql,
    wait_until,
    write_photos,
)

SKEW = timedelta(hours=3)
"""How far behind the Pi's clock is: a power cut, no RTC, no NTP."""


# The clock on its own, with its clocks in the test's hands


class Clocks:
    """A Pi's wall clock and boot clock that the test moves."""

    def __init__(self, wall: datetime) -> None:
        self.wall_time = wall
        self.boot_s = 100.0

    def wall(self) -> datetime:
        return self.wall_time

    def boot(self) -> float:
        return self.boot_s

    def advance(self, seconds: float, *, wall_jump_s: float = 0.0) -> None:
        self.boot_s += seconds
        self.wall_time += timedelta(seconds=seconds + wall_jump_s)


PI_TIME = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)
HUB_TIME = PI_TIME + SKEW


def hub_clock(clocks: Clocks, boot_id: str = "boot-a") -> HubClock:
    return HubClock(wall=clocks.wall, boot=clocks.boot, boot_id=boot_id)


def test_a_clock_off_by_hours_follows_the_hub_after_a_handshake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clocks = Clocks(PI_TIME)
    clock = hub_clock(clocks)
    assert clock.now() == PI_TIME and not clock.correcting

    with caplog.at_level(logging.WARNING, logger="edge_agent.clock"):
        clock.sync(clocks.wall() + SKEW)
    clocks.advance(60, wall_jump_s=-30)  # the Pi's clock also stumbles

    assert clock.correcting
    assert clock.last_jump_s == SKEW.total_seconds()
    assert clock.now() == HUB_TIME + timedelta(seconds=60)
    taken = clocks.wall() - timedelta(seconds=1)
    assert clock.convert(taken) == clock.now() - timedelta(seconds=1)
    assert clock.stamp() is None
    assert "3 h behind the hub's" in caplog.text


def test_a_clock_close_to_the_hubs_is_left_alone() -> None:
    clocks = Clocks(HUB_TIME)
    clock = hub_clock(clocks)
    clock.sync(clocks.wall() + timedelta(seconds=0.4))
    clocks.advance(3600)
    assert not clock.correcting and clock.last_jump_s == 0
    assert clock.now() == clocks.wall()
    assert clock.convert(clocks.wall()) == clocks.wall()
    assert clock.offset_s == 0.4


def test_photos_stamped_before_the_first_handshake_are_retimed() -> None:
    """Photos of this boot get the hub's time from the boot clock; photos of
    an earlier boot, or without a stamp, keep theirs."""
    clocks = Clocks(PI_TIME)
    clock = hub_clock(clocks)
    early = clock.stamp()
    assert early == {"boot_id": "boot-a", "boot_s": 100.0}
    assert clock.restamp(PI_TIME, early) == PI_TIME  # no handshake yet

    clocks.advance(600)
    clock.sync(clocks.wall() + SKEW)

    assert clock.restamp(PI_TIME, early) == HUB_TIME
    other_boot = {"boot_id": "boot-z", "boot_s": 5.0}
    assert clock.restamp(PI_TIME, other_boot) == PI_TIME
    assert clock.restamp(PI_TIME, None) == PI_TIME
    assert clock.restamp(PI_TIME, {"boot_id": "boot-a", "boot_s": "x"}) == PI_TIME


def test_a_malformed_hub_time_is_ignored_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hub_time that fits the schema's pattern but is no date (month 13)
    leaves the device on its own clock; the handshake still succeeds."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = protocol.FrameDecoder()
        frames: list[protocol.Frame] = []
        for answer in (
            protocol.challenge("ab" * 16, "cd" * 8, 10_000),
            {**protocol.auth_ok(DEVICE, 1, 1), "hub_time": "2026-13-45T10:00:00Z"},
        ):
            while not frames:
                frames.extend(decoder.feed(await reader.read(65536)))
            frames.pop(0)
            writer.write(protocol.encode(answer))
        await writer.drain()
        await reader.read()
        writer.close()

    async def scenario() -> Any:
        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        credentials = DeviceCredentials(DEVICE, "a-secret")
        async with server:
            async with DeviceClient(
                credentials, "127.0.0.1", port, sync_clock=True
            ) as c:
                return c.welcome

    with caplog.at_level(logging.WARNING, logger="farmeye.device_client"):
        welcome = asyncio.run(scenario())
    assert welcome is not None and welcome.hub_time is None
    assert "ignoring the hub's clock" in caplog.text


DEVICE = "dev_0123456789abcdef0123"


# Against a real hub


def test_hub_sends_its_clock_only_to_devices_that_ask(
    hub_process: HubProcess, camera: Camera
) -> None:
    """Old agents, whose auth_ok schema has no hub_time, never get one."""
    host, port = parse_address(hub_process.address)

    async def offsets() -> list[float | None]:
        found = []
        for sync_clock in (True, False):
            client = DeviceClient(camera.credentials, host, port, sync_clock=sync_clock)
            async with client:
                assert client.welcome is not None
                found.append(client.welcome.clock_offset_s)
        return found

    asked, not_asked = asyncio.run(offsets())
    assert asked is not None and abs(asked) < 1.0  # same machine, same clock
    assert not_asked is None
    assert "hub_time" not in protocol.auth_ok("dev_x", 1, 1)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """Photos written by a Pi whose clock is SKEW behind: their mtimes are."""
    folder = tmp_path / "inbox"
    write_photos(folder, 3)
    behind_s = (datetime.now(UTC) - SKEW).timestamp()
    for path in folder.iterdir():
        os.utime(path, (behind_s, behind_s))
    return folder


@pytest.mark.parametrize("from_hub", [True, False], ids=["hub clock", "pi clock"])
def test_capture_times_of_a_slow_camera_are_the_hubs(
    tmp_path: Path,
    inbox: Path,
    db_url: str,
    redis_db_url: str,
    camera: Camera,
    from_hub: bool,
) -> None:
    """The hub is down when the first photos are taken, then comes up: every
    photo is filed at the time it was taken by the hub's clock; with
    clock_from_hub off it keeps the Pi's wrong time (the control)."""
    hub = HubProcess(tmp_path, db_url, redis_db_url)
    config = load_config(
        agent_config(
            tmp_path,
            camera,
            hub.address,
            camera_config={"type": "folder", "path": str(inbox), "min_age_s": 0},
            schedule={"interval_s": 0.05},
            hub={"address": hub.address, "clock_from_hub": from_hub},
        )
    )
    pi = HubClock(wall=lambda: datetime.now(UTC) - SKEW)
    agent = Agent(config, clock=pi)

    def captured() -> list[tuple[datetime, datetime]]:
        return sql(
            db_url,
            "SELECT captured_at, received_at FROM captures WHERE device_id = %s",
            camera.device_id,
        )

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        loop = asyncio.get_running_loop()
        try:
            while agent.spool.depth < 3:  # spooled with the hub down
                await asyncio.sleep(0.05)
            await loop.run_in_executor(None, hub.start)
            await loop.run_in_executor(None, lambda: wait_until(
                lambda: len(captured()) == 3, 60))  # fmt: skip
        finally:
            stop.set()
            await running

    try:
        asyncio.run(scenario())
    finally:
        hub.stop()

    errors = [received - taken for taken, received in captured()]
    if from_hub:
        # Taken while the hub was down, received seconds later.
        assert all(timedelta(0) <= error < timedelta(seconds=60) for error in errors)
        assert pi.offset_s is not None and abs(pi.offset_s - SKEW.total_seconds()) < 5
    else:
        assert all(abs(error - SKEW) < timedelta(seconds=60) for error in errors)
