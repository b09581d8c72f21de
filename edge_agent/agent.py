"""The agent's main loop: capture -> spool -> uploader, plus health and display.

Tasks, all on one asyncio loop:

- the :class:`~edge_agent.schedule.Scheduler` calls :meth:`Agent.capture`,
  which takes a photo in a worker thread, optionally triages it, writes it to
  the spool and wakes the uploader;
- the :class:`~edge_agent.uploader.Uploader` keeps the hub connection, drains
  the spool, sends health reports and passes hub commands to the scheduler;
- the :class:`~edge_agent.display.Display`, when enabled, follows the coop's
  verdicts;
- a systemd watchdog ping, when the unit asks for one.

SIGTERM and SIGINT stop the loop cleanly: photos not yet acknowledged stay in
the spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent import systemd
from edge_agent.cameras import Camera, CameraError, Photo, make_camera
from edge_agent.clock import HubClock
from edge_agent.config import AgentConfig
from edge_agent.display import (
    Display,
    StatusBoard,
    load_renderer,
    write_json_atomically,
)
from edge_agent.health import CameraStatus, HealthReporter
from edge_agent.local_triage import LocalTriage
from edge_agent.schedule import Schedule, Scheduler, SimilarFrameFilter, utc_now
from edge_agent.spool import AsyncSpool, Spool
from edge_agent.uploader import Uploader
from farmeye.device_client import Welcome

logger = logging.getLogger(__name__)

RETIME_AFTER_S = 5.0
"""A handshake that moves the agent's clock by more re-times the schedule."""

SCHEDULE_FILE = "schedule.json"
"""In the state folder: the last schedule the hub pushed, kept across restarts."""

META_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
META_TEXT_CHARS = 200


class Agent:
    """One camera's agent; build it, then ``await agent.run(stop)``."""

    def __init__(self, config: AgentConfig, *, clock: HubClock | None = None) -> None:
        """``clock`` replaces the :class:`HubClock` on the Pi's own clocks."""
        self.config = config
        self.spool = Spool(
            config.spool_path, config.spool.quota_bytes, config.spool.min_free_bytes
        )
        self.async_spool = AsyncSpool(self.spool)
        if not config.hub.clock_from_hub:
            clock = None
        elif clock is None:
            clock = HubClock()
        self.clock = clock
        self.camera_status = CameraStatus()
        self.camera: Camera = make_camera(config.camera)
        self._camera_open = False
        self.scheduler = Scheduler(
            self._initial_schedule(),
            self.capture,
            on_schedule_change=self._save_schedule,
            clock=self.clock.now if self.clock is not None else utc_now,
        )
        self.uploader = Uploader(
            config,
            self.async_spool,
            HealthReporter(self.spool, self.camera_status, self.clock),
            on_command=self.scheduler.handle_command,
            on_welcome=self._welcome,
            clock=self.clock,
        )
        self.similar = (
            SimilarFrameFilter(
                config.schedule.similar_max_bits, config.schedule.similar_keep_s
            )
            if config.schedule.skip_similar
            else None
        )
        self.display = self._make_display()
        self.triage: LocalTriage | None = None
        self.captured = 0

    # Start and stop

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""
        await self.async_spool.open()
        if self.config.triage.enabled:
            self.triage = await asyncio.to_thread(
                LocalTriage.load, self.config.triage.threads
            )
        tasks = [
            asyncio.create_task(self.scheduler.run(), name="schedule"),
            asyncio.create_task(self.uploader.run(), name="uploader"),
        ]
        if self.display is not None:
            tasks.append(asyncio.create_task(self.display.run(), name="display"))
        watchdog_s = systemd.watchdog_interval_s()
        if watchdog_s is not None:
            tasks.append(asyncio.create_task(_watchdog(watchdog_s), name="watchdog"))
        systemd.notify("READY=1")
        logger.info("agent for device %s started", self.config.device_id)
        try:
            await _until_stop_or_crash(stop, tasks)
        finally:
            systemd.notify("STOPPING=1")
            await self._shutdown(tasks)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.camera.close)
        self.async_spool.close()
        if self.display is not None:
            self.display.board.close()
        logger.info(
            "agent stopped; %s photos wait in the spool for the next start",
            self.spool.depth,
        )

    # Capture

    async def capture(self, reason: str) -> None:
        """Take one photo and spool it; errors are logged, never raised."""
        photo = await asyncio.to_thread(self._take, reason)
        if photo is None:
            return
        extra: dict[str, Any] = {"meta": {**_clean_meta(photo.meta), "reason": reason}}
        captured_at = photo.captured_at
        if self.clock is not None:
            captured_at = self.clock.convert(captured_at)
            stamp = self.clock.stamp()
            if stamp is not None:
                extra["clock"] = stamp
        if self.triage is not None:
            verdict = await asyncio.to_thread(self.triage.verdict, photo.data)
            if verdict is not None:
                extra["triage"] = verdict
        await self._spool(photo, captured_at, extra)

    def _take(self, reason: str) -> Photo | None:
        """Runs in a worker thread: the camera and the hash block."""
        try:
            if not self._camera_open:
                self.camera.open()
                self._camera_open = True
            photo = self.camera.capture()
        except CameraError as exc:
            self._camera_failed(exc)
            return None
        self.camera_status.ok, self.camera_status.error = True, None
        if photo is None:
            return None
        if reason == "schedule" and self.similar is not None:
            if not self.similar.keep(photo.data, photo.captured_at):
                logger.debug("skipping a photo nearly identical to the last one")
                photo.release()
                return None
        return photo

    def _camera_failed(self, exc: CameraError) -> None:
        if self.camera_status.ok or self.camera_status.error != str(exc):
            logger.warning("camera %s failed: %s", self.camera.name, exc)
        self.camera_status.ok, self.camera_status.error = False, str(exc)
        self._camera_open = False
        with contextlib.suppress(Exception):
            self.camera.close()

    async def _spool(
        self, photo: Photo, captured_at: datetime, extra: dict[str, Any]
    ) -> None:
        dropped_before = self.spool.dropped
        try:
            await self.async_spool.put(
                photo.data, captured_at, photo.content_type, extra
            )
        except OSError:
            logger.exception("could not spool a photo; it is lost")
            return
        photo.release()
        self.captured += 1
        self.camera_status.last_capture_at = captured_at
        self.uploader.notify()
        if self.spool.dropped != dropped_before:
            self.uploader.request_health()

    # Hub

    def _welcome(self, welcome: Welcome) -> None:
        if self.clock is not None and abs(self.clock.last_jump_s) > RETIME_AFTER_S:
            self.scheduler.retime()
        if welcome.schedule is not None:
            pushed = self.scheduler.schedule.with_hub_args(welcome.schedule)
            if pushed != self.scheduler.schedule:
                self.scheduler.set_schedule(pushed)
        if self.display is not None and self.config.display.coop_id is None:
            self.display.set_coop(welcome.coop_id)

    def _initial_schedule(self) -> Schedule:
        schedule = Schedule.from_config(self.config.schedule)
        saved = _read_saved_schedule(self._schedule_path)
        return schedule.with_hub_args(saved) if saved is not None else schedule

    @property
    def _schedule_path(self) -> Path:
        return self.config.state_dir / SCHEDULE_FILE

    def _save_schedule(self, schedule: Schedule) -> None:
        try:
            write_json_atomically(self._schedule_path, schedule.to_hub_args())
        except OSError as exc:
            logger.warning("cannot save the hub's schedule: %s", exc)

    # Display

    def _make_display(self) -> Display | None:
        settings = self.config.display
        if not settings.enabled or settings.url is None:
            return None
        renderers = [load_renderer(entry) for entry in settings.renderers]
        board = StatusBoard(self.config.status_file, renderers)
        return Display(
            settings.url, self.config.display_token(), board, coop_id=settings.coop_id
        )


def _read_saved_schedule(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable saved schedule %s: %s", path, exc)
        return None
    if not isinstance(value, dict) or not isinstance(
        value.get("interval_s"), int | float
    ):
        logger.warning("ignoring saved schedule %s: no interval_s", path)
        return None
    return value


def _clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Keep what the upload schema allows: short keys, plain short values."""
    clean: dict[str, Any] = {}
    for key, value in list(meta.items())[:30]:
        if not META_KEY.match(key):
            continue
        if isinstance(value, str):
            value = "".join(c for c in value if c.isprintable())[:META_TEXT_CHARS]
        elif not isinstance(value, int | float | bool) and value is not None:
            continue
        clean[key] = value
    return clean


async def _until_stop_or_crash(
    stop: asyncio.Event, tasks: list[asyncio.Task[None]]
) -> None:
    """Wait for ``stop``; a task that ends on its own is a bug: raise it."""
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait(
            [stopper, *tasks], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stopper.cancel()
    for task in done:
        if task is not stopper:
            task.result()
            raise RuntimeError(f"agent task {task.get_name()} ended unexpectedly")


async def _watchdog(interval_s: float) -> None:
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


async def run_agent(config: AgentConfig) -> None:
    """Run an agent until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    agent = Agent(config)
    try:
        await agent.run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
