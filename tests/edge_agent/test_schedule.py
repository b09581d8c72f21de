"""The capture schedule: active hours, jitter, and the hub's commands."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.request
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from edge_agent.schedule import Schedule, Scheduler, SimilarFrameFilter
from tests.edge_agent.support import (
    AgentProcess,
    Camera,
    HubProcess,
    agent_config,
    capture_hashes,
    photo,
    read_json,
    wait_until,
)
from tests.hub.support import add_user

DAY_WINDOW = Schedule(interval_s=60, active_start=time(5, 0), active_end=time(19, 0))
NIGHT_WINDOW = Schedule(interval_s=60, active_start=time(22, 0), active_end=time(4, 0))


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 5, 1, hour, minute, tzinfo=UTC)


def test_active_window_within_a_day() -> None:
    """05:00-19:00 includes its start and excludes its end."""
    assert DAY_WINDOW.is_active(at(5))
    assert DAY_WINDOW.is_active(at(18, 59))
    assert not DAY_WINDOW.is_active(at(19))
    assert not DAY_WINDOW.is_active(at(2))


def test_active_window_wrapping_midnight() -> None:
    """22:00-04:00 covers late evening and early morning only."""
    assert NIGHT_WINDOW.is_active(at(23))
    assert NIGHT_WINDOW.is_active(at(3, 59))
    assert not NIGHT_WINDOW.is_active(at(12))


def test_no_window_means_always_active() -> None:
    """Without active hours every moment is active."""
    assert Schedule(interval_s=60).is_active(at(3))


def test_capture_after_the_window_waits_for_the_next_opening() -> None:
    """A photo due at night moves to the window's next start."""
    assert DAY_WINDOW.next_capture(at(22), random.Random(1)) == at(5) + timedelta(
        days=1
    )


def test_jitter_stays_within_its_bounds() -> None:
    """interval +/- jitter, the jitter capped at half the interval."""
    rng = random.Random(7)
    jittered = Schedule(interval_s=60, jitter_s=5)
    delays = [(jittered.next_capture(at(12), rng) - at(12)).total_seconds()
              for _ in range(2000)]  # fmt: skip
    assert min(delays) >= 55 and max(delays) <= 65
    assert max(delays) - min(delays) > 8

    wide = Schedule(interval_s=10, jitter_s=60)
    delays = [(wide.next_capture(at(12), rng) - at(12)).total_seconds()
              for _ in range(2000)]  # fmt: skip
    assert min(delays) >= 5 and max(delays) <= 15


def test_jitter_after_window_opening_stays_inside_the_window() -> None:
    """A photo moved to the window's start gets only a forward jitter."""
    rng = random.Random(3)
    schedule = Schedule(60, 20, time(5, 0), time(19, 0))
    opening = at(5) + timedelta(days=1)
    for _ in range(500):
        moment = schedule.next_capture(at(21), rng)
        assert opening <= moment <= opening + timedelta(seconds=20)


def test_hub_schedule_replaces_interval_and_window_and_keeps_jitter() -> None:
    """set_schedule args replace interval and hours; local jitter stays."""
    local = Schedule(60, 5, time(5, 0), time(19, 0))
    pushed = local.with_hub_args({"interval_s": 300})
    assert pushed == Schedule(300, 5, None, None)
    assert local.with_hub_args(local.to_hub_args()) == local


class Recorder:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    async def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


async def run_briefly(scheduler: Scheduler, steps: int = 20) -> None:
    task = asyncio.create_task(scheduler.run())
    for _ in range(steps):
        await asyncio.sleep(0.01)
    task.cancel()


def test_capture_now_command_takes_photos_at_once() -> None:
    """capture_now with count 3 takes three photos outside the schedule."""

    async def scenario() -> list[str]:
        recorder = Recorder()
        scheduler = Scheduler(Schedule(interval_s=3600), recorder)
        scheduler.handle_command(
            {"type": "command", "id": 1, "name": "capture_now", "args": {"count": 3}}
        )
        await run_briefly(scheduler)
        return recorder.reasons

    assert asyncio.run(scenario()) == ["command"] * 3


def test_capture_now_ignores_active_hours() -> None:
    """A commanded photo is taken at night too."""

    async def scenario() -> list[str]:
        recorder = Recorder()
        scheduler = Scheduler(DAY_WINDOW, recorder, clock=lambda: at(23))
        scheduler.capture_now()
        await run_briefly(scheduler)
        return recorder.reasons

    assert asyncio.run(scenario()) == ["command"]


def test_set_schedule_command_retimes_the_next_photo() -> None:
    """set_schedule replaces the schedule, reports it, and times from now."""

    async def scenario() -> tuple[Scheduler, list[Schedule]]:
        changes: list[Schedule] = []
        scheduler = Scheduler(
            Schedule(interval_s=3600),
            Recorder(),
            clock=lambda: at(12),
            on_schedule_change=changes.append,
        )
        scheduler.handle_command(
            {"type": "command", "id": 2, "name": "set_schedule",
             "args": {"interval_s": 600, "active_start_utc": "06:00",
                      "active_end_utc": "18:00"}}
        )  # fmt: skip
        await run_briefly(scheduler)
        return scheduler, changes

    scheduler, changes = asyncio.run(scenario())
    assert changes == [Schedule(600, 0, time(6, 0), time(18, 0))]
    assert scheduler.next_at == at(12, 10)


def test_retime_after_the_clock_went_back_times_the_next_photo_from_now() -> None:
    """A Pi three hours ahead learns the hub's time: its next photo is an
    interval from the new now, not three hours and an interval."""
    now = [at(15)]

    async def scenario() -> tuple[datetime | None, datetime | None]:
        scheduler = Scheduler(
            Schedule(interval_s=600), Recorder(), clock=lambda: now[0]
        )
        task = asyncio.create_task(scheduler.run())
        await asyncio.sleep(0.05)
        before = scheduler.next_at
        now[0] = at(12)
        scheduler.retime()
        await asyncio.sleep(0.05)
        task.cancel()
        return before, scheduler.next_at

    assert asyncio.run(scenario()) == (at(15, 10), at(12, 10))


def test_scheduled_photos_follow_the_interval() -> None:
    """With a short interval the loop keeps capturing on schedule."""

    async def scenario() -> list[str]:
        recorder = Recorder()
        await run_briefly(Scheduler(Schedule(interval_s=0.02), recorder), steps=30)
        return recorder.reasons

    reasons = asyncio.run(scenario())
    assert len(reasons) >= 3 and set(reasons) == {"schedule"}


def test_near_identical_frames_are_skipped_until_keep_time() -> None:
    """Same scene: skipped; changed scene or keep_s elapsed: kept."""
    frames = SimilarFrameFilter(max_bits=4, keep_s=600)
    assert frames.keep(photo(1), at(12))
    assert not frames.keep(photo(1), at(12, 1))
    assert frames.keep(photo(2), at(12, 2))
    assert frames.keep(photo(2), at(12, 13))
    assert frames.skipped == 1


def post_command(
    hub: HubProcess, token: str, device_id: str, body: dict[str, Any]
) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.http_port}/api/devices/{device_id}/commands",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}",
                 "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return int(response.status)


def test_commands_from_the_hub_reach_the_schedule(
    tmp_path: Path, hub_process: HubProcess, camera: Camera, db_url: str
) -> None:
    """Via a real hub: capture_now takes photos; set_schedule is applied and saved."""
    token = add_user(db_url, "manager", "farm-a")
    config = agent_config(
        tmp_path, camera, hub_process.address, schedule={"interval_s": 3600}
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        wait_until(lambda: "connected to hub" in agent.log())
        body = {"name": "capture_now", "args": {"count": 3}}
        assert post_command(hub_process, token, camera.device_id, body) == 202
        wait_until(lambda: len(capture_hashes(db_url, camera.device_id)) == 3)

        body = {"name": "set_schedule",
                "args": {"interval_s": 900, "active_start_utc": "04:00",
                         "active_end_utc": "20:00"}}  # fmt: skip
        assert post_command(hub_process, token, camera.device_id, body) == 202
        saved = tmp_path / "agent-state" / "schedule.json"
        wait_until(saved.exists)
        assert read_json(saved) == body["args"]
    finally:
        assert agent.stop() == 0
    assert "schedule is now every 900.0s between 04:00 and 20:00 UTC" in agent.log()
