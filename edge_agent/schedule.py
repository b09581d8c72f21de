"""When photos are taken: interval, jitter, active hours, hub commands.

The :class:`Scheduler` sleeps until the next capture time and calls the
capture function. The hub can ask for photos at once (``capture_now``) or
replace the schedule (``set_schedule``, or the schedule in ``auth_ok``).
Active hours are in UTC, as the hub sends them, and may wrap past midnight;
photos commanded by the hub are taken whatever the hour.

Waits are cut into steps of at most :data:`MAX_SLEEP_S` and the wall clock is
read again after each, so a Pi without a real-time clock that sets its time
from NTP after boot does not sleep through a whole day.

:class:`SimilarFrameFilter` drops a photo whose 64-bit difference hash is
within a few bits of the last photo kept, so a static empty coop does not
fill the spool, while still keeping one photo per ``keep_s``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

from PIL import Image

from edge_agent.config import ScheduleConfig, parse_hhmm

logger = logging.getLogger(__name__)

MAX_SLEEP_S = 60.0
"""Longest single sleep before the clock is read again."""

HASH_SIDE = 8
"""The difference hash compares neighbours on a 9x8 grey thumbnail: 64 bits."""

CaptureFunction = Callable[[str], Awaitable[None]]
"""Takes one photo; the argument says why ('schedule' or 'command')."""

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Schedule:
    """Capture every ``interval_s`` (+/- jitter) inside the active window."""

    interval_s: float
    jitter_s: float = 0.0
    active_start: time | None = None
    active_end: time | None = None

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> Schedule:
        return cls(
            interval_s=config.interval_s,
            jitter_s=config.jitter_s,
            active_start=_optional_hhmm(config.active_start_utc),
            active_end=_optional_hhmm(config.active_end_utc),
        )

    def with_hub_args(self, args: Mapping[str, Any]) -> Schedule:
        """This schedule as the hub's ``set_schedule`` args replace it.

        The hub sets interval and window; the local jitter stays.
        """
        return replace(
            self,
            interval_s=float(args["interval_s"]),
            active_start=_optional_hhmm(args.get("active_start_utc")),
            active_end=_optional_hhmm(args.get("active_end_utc")),
        )

    def to_hub_args(self) -> dict[str, Any]:
        """The ``set_schedule`` form, for saving a schedule the hub pushed."""
        args: dict[str, Any] = {"interval_s": self.interval_s}
        if self.active_start is not None and self.active_end is not None:
            args["active_start_utc"] = self.active_start.strftime("%H:%M")
            args["active_end_utc"] = self.active_end.strftime("%H:%M")
        return args

    @property
    def spread_s(self) -> float:
        """Jitter actually applied: at most half the interval."""
        return min(self.jitter_s, self.interval_s / 2)

    def is_active(self, moment: datetime) -> bool:
        """Whether ``moment`` lies in the daily window (always, with none)."""
        start, end = self.active_start, self.active_end
        if start is None or end is None or start == end:
            return True
        now = moment.astimezone(UTC).time()
        if start < end:
            return start <= now < end
        return now >= start or now < end

    def next_capture(self, after: datetime, rng: random.Random) -> datetime:
        """When the next scheduled photo is due after one taken at ``after``."""
        spread_s = self.spread_s
        offset_s = self.interval_s + rng.uniform(-spread_s, spread_s)
        candidate = after + timedelta(seconds=offset_s)
        if self.is_active(candidate):
            return candidate
        return self.window_opens(candidate) + timedelta(
            seconds=rng.uniform(0, spread_s)
        )

    def window_opens(self, moment: datetime) -> datetime:
        """The first start of the active window at or after ``moment``."""
        if self.active_start is None:
            return moment
        moment = moment.astimezone(UTC)
        opening = datetime.combine(moment.date(), self.active_start, UTC)
        return opening if opening >= moment else opening + timedelta(days=1)


def _optional_hhmm(value: str | None) -> time | None:
    return parse_hhmm(value) if value is not None else None


@dataclass(frozen=True)
class _CaptureNow:
    count: int


@dataclass(frozen=True)
class _Retime:
    pass


@dataclass(frozen=True)
class _NewSchedule:
    schedule: Schedule


class Scheduler:
    """Runs the capture function on the schedule and on the hub's commands."""

    def __init__(
        self,
        schedule: Schedule,
        capture: CaptureFunction,
        *,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        on_schedule_change: Callable[[Schedule], None] | None = None,
    ) -> None:
        self.schedule = schedule
        self._capture = capture
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_schedule_change = on_schedule_change
        self._requests: asyncio.Queue[_CaptureNow | _NewSchedule | _Retime] = (
            asyncio.Queue()
        )
        self.next_at: datetime | None = None

    # Requests from the hub

    def capture_now(self, count: int = 1) -> None:
        """Take ``count`` photos at once, whatever the hour."""
        self._requests.put_nowait(_CaptureNow(count))

    def set_schedule(self, schedule: Schedule) -> None:
        """Replace the schedule; the next photo is timed from now."""
        self._requests.put_nowait(_NewSchedule(schedule))

    def retime(self) -> None:
        """Time the next photo from now again, after the clock jumped.

        A clock set back by hours would otherwise leave the next photo
        hours away; one set forward would make it due at once.
        """
        self._requests.put_nowait(_Retime())

    def handle_command(self, header: Mapping[str, Any]) -> None:
        """Act on a ``command`` frame from the hub (already schema-checked)."""
        name, args = header["name"], header.get("args", {})
        logger.info("hub command %s %s", name, args)
        if name == "capture_now":
            self.capture_now(int(args.get("count", 1)))
        elif name == "set_schedule":
            self.set_schedule(self.schedule.with_hub_args(args))
        else:
            logger.warning("ignoring unknown hub command %r", name)

    # The loop

    async def run(self) -> None:
        """Capture forever; cancel the task to stop."""
        self.next_at = self.schedule.next_capture(self._clock(), self._rng)
        while True:
            request = await self._wait_for_request()
            if request is None:
                await self._capture("schedule")
                self.next_at = self.schedule.next_capture(self._clock(), self._rng)
            elif isinstance(request, _CaptureNow):
                for _ in range(request.count):
                    await self._capture("command")
            elif isinstance(request, _Retime):
                self.next_at = self.schedule.next_capture(self._clock(), self._rng)
                logger.info(
                    "the clock moved; next photo at %s",
                    self.next_at.isoformat(timespec="seconds"),
                )
            else:
                self._apply(request.schedule)

    async def _wait_for_request(self) -> _CaptureNow | _NewSchedule | _Retime | None:
        """The next hub request, or ``None`` once the next photo is due."""
        assert self.next_at is not None  # noqa: S101 (set by run)
        while True:
            remaining_s = (self.next_at - self._clock()).total_seconds()
            if remaining_s <= 0:
                return None
            try:
                return await asyncio.wait_for(
                    self._requests.get(), min(remaining_s, MAX_SLEEP_S)
                )
            except TimeoutError:
                continue

    def _apply(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.next_at = schedule.next_capture(self._clock(), self._rng)
        logger.info(
            "schedule is now every %ss%s; next photo at %s",
            schedule.interval_s,
            _window_text(schedule),
            self.next_at.isoformat(timespec="seconds"),
        )
        if self._on_schedule_change is not None:
            self._on_schedule_change(schedule)


def _window_text(schedule: Schedule) -> str:
    if schedule.active_start is None or schedule.active_end is None:
        return ""
    return f" between {schedule.active_start:%H:%M} and {schedule.active_end:%H:%M} UTC"


# Near-identical frames


def difference_hash(data: bytes) -> int:
    """A 64-bit perceptual hash: which of each pair of neighbours is brighter."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (HASH_SIDE * 8, HASH_SIDE * 8))
        grey = image.convert("L").resize((HASH_SIDE + 1, HASH_SIDE))
        pixels = list(grey.getdata())
    bits = 0
    for row in range(HASH_SIDE):
        start = row * (HASH_SIDE + 1)
        for column in range(HASH_SIDE):
            left, right = pixels[start + column], pixels[start + column + 1]
            bits = (bits << 1) | (left > right)
    return bits


class SimilarFrameFilter:
    """Decides whether a photo differs enough from the last one kept."""

    def __init__(self, max_bits: int, keep_s: float) -> None:
        self.max_bits = max_bits
        self.keep_s = keep_s
        self.skipped = 0
        self._last_hash: int | None = None
        self._last_kept_at: datetime | None = None

    def keep(self, data: bytes, captured_at: datetime) -> bool:
        """True to keep the photo; an undecodable one is kept (the hub judges)."""
        try:
            current = difference_hash(data)
        except (OSError, ValueError):
            return True
        if self._is_repeat(current, captured_at):
            self.skipped += 1
            return False
        self._last_hash, self._last_kept_at = current, captured_at
        return True

    def _is_repeat(self, current: int, captured_at: datetime) -> bool:
        if self._last_hash is None or self._last_kept_at is None:
            return False
        if (captured_at - self._last_kept_at).total_seconds() >= self.keep_s:
            return False
        return (current ^ self._last_hash).bit_count() <= self.max_bits
