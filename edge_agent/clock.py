"""Capture times on the hub's clock when the Pi's own cannot be trusted.

A Raspberry Pi has no real-time clock. After a power cut it starts at the
time it saved when it last shut down, and on a farm without internet no NTP
server may ever correct it. Photos would then carry times hours or days
off, which files them in the wrong place in history and keeps them out of
the alert rule's six-hour window.

The hub's clock is the farm's reference, and every handshake carries it
(``hub_time`` in ``auth_ok``). :class:`HubClock` keeps the offset found at
the last handshake together with the kernel's boot clock (``CLOCK_BOOTTIME``,
which counts suspend and never jumps), so that:

- when the Pi's clock is off by more than :data:`TOLERANCE_S`, ``now()`` is the
  hub's time, carried forward on the boot clock (the schedule and new
  photos use it);
- a photo taken since this boot but before any handshake (the hub was out of
  reach) carries a :meth:`stamp` of the boot clock, and :meth:`restamp` puts
  it on the hub's timeline once a handshake has happened in the same boot.

Photos from an earlier boot keep the time the Pi gave them: nothing links
that boot's clock to the hub's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from edge_agent.schedule import utc_now

logger = logging.getLogger(__name__)

TOLERANCE_S = 2.0
"""A Pi clock within this of the hub's is left alone (NTP keeps it better)."""

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def boot_seconds() -> float:
    """Seconds on a clock that starts at boot and never jumps."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


def read_boot_id(path: Path = BOOT_ID_FILE) -> str:
    """This boot's id from the kernel; a per-process one where there is none."""
    try:
        return path.read_text().strip() or _PROCESS_BOOT_ID
    except OSError:
        return _PROCESS_BOOT_ID


_PROCESS_BOOT_ID = f"process-{time.time_ns()}"


@dataclass(frozen=True)
class _Sync:
    boot_s: float
    hub_time: datetime


class HubClock:
    """The Pi's clock, corrected to the hub's once a handshake tells it."""

    def __init__(
        self,
        wall: Callable[[], datetime] = utc_now,
        boot: Callable[[], float] = boot_seconds,
        boot_id: str | None = None,
    ) -> None:
        self._wall = wall
        self._boot = boot
        self.boot_id = boot_id if boot_id is not None else read_boot_id()
        self._sync: _Sync | None = None
        self.offset_s: float | None = None
        """The hub's clock minus the Pi's at the last handshake."""
        self.last_jump_s = 0.0
        """How far :meth:`now` moved at the last :meth:`sync`."""

    @property
    def correcting(self) -> bool:
        """Whether times come from the hub's clock rather than the Pi's."""
        return self.offset_s is not None and abs(self.offset_s) > TOLERANCE_S

    def sync(self, hub_time: datetime) -> None:
        """Take the hub's clock from a handshake that just ended (``Welcome``)."""
        was_correcting = self.correcting
        before = self.now()
        offset_s = (hub_time - self._wall()).total_seconds()
        self.offset_s = offset_s
        self._sync = _Sync(self._boot(), hub_time)
        self.last_jump_s = (self.now() - before).total_seconds()
        if self.correcting and not was_correcting:
            logger.warning(
                "this camera's clock is %s the hub's; capture times and the "
                "schedule follow the hub's clock",
                _describe(offset_s),
            )
        elif was_correcting and not self.correcting:
            logger.info("this camera's clock agrees with the hub's again")

    def now(self) -> datetime:
        """The current time: the hub's when the Pi's is off, else the Pi's."""
        if self._sync is None or not self.correcting:
            return self._wall()
        return self._sync.hub_time + timedelta(seconds=self._boot() - self._sync.boot_s)

    def convert(self, wall_time: datetime) -> datetime:
        """A time the Pi's clock gave a moment ago, on the clock of :meth:`now`."""
        if not self.correcting:
            return wall_time
        return wall_time + (self.now() - self._wall())

    def stamp(self) -> dict[str, Any] | None:
        """What :meth:`restamp` needs later; None once synced in this boot."""
        if self._sync is not None:
            return None
        return {"boot_id": self.boot_id, "boot_s": round(self._boot(), 3)}

    def restamp(
        self, captured_at: datetime, stamp: Mapping[str, Any] | None
    ) -> datetime:
        """The hub-clock time of a photo stamped before the first handshake.

        Unchanged without a stamp, before any handshake, or for a photo of
        an earlier boot.
        """
        if (
            not stamp
            or self._sync is None
            or stamp.get("boot_id") != self.boot_id
            or not isinstance(stamp.get("boot_s"), int | float)
        ):
            return captured_at
        elapsed_s = float(stamp["boot_s"]) - self._sync.boot_s
        return self._sync.hub_time + timedelta(seconds=elapsed_s)


def _describe(offset_s: float) -> str:
    """'3 h 2 min behind' for an offset of +10920 s (the hub is ahead)."""
    seconds = round(abs(offset_s))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    if minutes:
        parts.append(f"{minutes} min")
    if not hours:
        parts.append(f"{seconds} s")
    return " ".join(parts) + (" behind" if offset_s > 0 else " ahead of")
