"""The heartbeat: what the hub learns about a camera nobody visits.

Each report is a protocol ``health`` frame (``schemas/health.json``). Facts
the platform does not expose are left out rather than guessed: a laptop has
no Raspberry Pi throttling flags, a wired Pi has no Wi-Fi signal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from edge_agent.clock import HubClock
from edge_agent.spool import Spool
from farmeye import __version__

logger = logging.getLogger(__name__)

AGENT_VERSION: Final = f"farmeye-agent/{__version__}"

THERMAL_DIR = Path("/sys/class/thermal")
FIRMWARE_THROTTLED = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
MEMINFO = Path("/proc/meminfo")
WIRELESS = Path("/proc/net/wireless")
VCGENCMD_TIMEOUT_S = 5.0

THROTTLE_BITS: Final[Mapping[int, str]] = {
    0: "under_voltage",
    1: "frequency_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_since_boot",
    17: "frequency_capped_since_boot",
    18: "throttled_since_boot",
    19: "soft_temp_limit_since_boot",
}
"""Bits of the firmware's get_throttled word and the names health.json uses."""


@dataclass
class CameraStatus:
    """What the capture loop last saw, for the next report."""

    ok: bool = True
    error: str | None = None
    last_capture_at: datetime | None = None


class HealthReporter:
    """Builds health reports from the spool, the camera and the platform."""

    def __init__(
        self, spool: Spool, camera: CameraStatus, clock: HubClock | None = None
    ) -> None:
        self.spool = spool
        self.camera = camera
        self.clock = clock
        self._started_s = time.monotonic()
        self._vcgencmd = shutil.which("vcgencmd")

    async def report(self) -> dict[str, Any]:
        """Keyword arguments for :func:`farmeye.protocol.health`."""
        fields: dict[str, Any] = {
            "agent_version": AGENT_VERSION,
            "uptime_s": round(time.monotonic() - self._started_s, 1),
            "spool_depth": self.spool.depth,
            "spool_bytes": self.spool.size_bytes,
            "dropped_captures": self.spool.dropped + self.spool.quarantined,
            "camera_ok": self.camera.ok,
            "camera_error": _one_line(self.camera.error),
        }
        if self.camera.last_capture_at is not None:
            fields["last_capture_at"] = self.camera.last_capture_at
        if self.clock is not None and self.clock.offset_s is not None:
            fields["clock_offset_s"] = round(self.clock.offset_s, 3)
        fields.update(self._platform())
        throttled = await self._throttled()
        if throttled is not None:
            fields["throttled"] = throttled
        return fields

    def _platform(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"cpu_temp_c": cpu_temperature_c()}
        optional = {
            "disk_free_bytes": _disk_free_bytes(self.spool.path),
            "memory_free_bytes": memory_available_bytes(),
            "load_1m": _load_1m(),
            "wifi_signal_dbm": wifi_signal_dbm(),
        }
        fields.update(
            {key: value for key, value in optional.items() if value is not None}
        )
        return fields

    async def _throttled(self) -> list[str] | None:
        word = read_throttled_sysfs()
        if word is None and self._vcgencmd is not None:
            word = await _read_throttled_vcgencmd(self._vcgencmd)
        return throttle_flags(word) if word is not None else None


def _one_line(text: str | None) -> str | None:
    if text is None:
        return None
    return "".join(c if c.isprintable() else " " for c in text)[:256]


def _disk_free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _load_1m() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_temperature_c(thermal_dir: Path = THERMAL_DIR) -> float | None:
    """The SoC temperature: the CPU's thermal zone, else the first readable."""
    zones = sorted(thermal_dir.glob("thermal_zone*"))
    preferred = [zone for zone in zones if "cpu" in _read_text(zone / "type")]
    for zone in preferred + zones:
        raw = _read_text(zone / "temp")
        try:
            celsius = int(raw) / 1000
        except ValueError:
            continue
        if -60 <= celsius <= 150:
            return round(celsius, 1)
    return None


def memory_available_bytes(meminfo: Path = MEMINFO) -> int | None:
    """MemAvailable from /proc/meminfo, in bytes."""
    for line in _read_text(meminfo).splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def wifi_signal_dbm(wireless: Path = WIRELESS) -> int | None:
    """Signal level of the first wireless interface, or None on a wired link."""
    lines = _read_text(wireless).splitlines()[2:]
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        try:
            level = int(float(fields[3].rstrip(".")))
        except ValueError:
            continue
        if -120 <= level <= 0:
            return level
    return None


def read_throttled_sysfs(path: Path = FIRMWARE_THROTTLED) -> int | None:
    """The firmware's throttling word where the kernel exposes it."""
    text = _read_text(path)
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


async def _read_throttled_vcgencmd(vcgencmd: str) -> int | None:
    """``vcgencmd get_throttled`` prints e.g. ``throttled=0x50005``."""
    try:
        process = await asyncio.create_subprocess_exec(
            vcgencmd,
            "get_throttled",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        output, _ = await asyncio.wait_for(process.communicate(), VCGENCMD_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        logger.debug("vcgencmd get_throttled failed: %s", exc)
        return None
    return parse_vcgencmd_throttled(output.decode("ascii", "replace"))


def parse_vcgencmd_throttled(output: str) -> int | None:
    """The word in ``throttled=0x50005``; None for anything else."""
    _, sep, value = output.strip().partition("=")
    if not sep:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def throttle_flags(word: int) -> list[str]:
    """Names of the bits set in a get_throttled word."""
    return [name for bit, name in THROTTLE_BITS.items() if word & (1 << bit)]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""
