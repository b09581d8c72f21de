"""Health reports: platform facts parsed right and frames the hub accepts."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.health import (
    CameraStatus,
    HealthReporter,
    cpu_temperature_c,
    parse_vcgencmd_throttled,
    read_throttled_sysfs,
    throttle_flags,
    wifi_signal_dbm,
)
from edge_agent.spool import Spool
from edge_agent.uploader import Backoff
from farmeye import protocol
from tests.edge_agent.support import photo


def test_throttle_word_names_current_and_past_flags() -> None:
    """0x50005: under-voltage and throttled now, both also since boot."""
    assert throttle_flags(0x50005) == [
        "under_voltage", "throttled",
        "under_voltage_since_boot", "throttled_since_boot",
    ]  # fmt: skip
    assert throttle_flags(0) == []


def test_vcgencmd_and_sysfs_throttle_outputs_are_parsed(tmp_path: Path) -> None:
    """Both the vcgencmd line and the sysfs hex word give the same number."""
    assert parse_vcgencmd_throttled("throttled=0x50005\n") == 0x50005
    assert parse_vcgencmd_throttled("error=1 error_msg=...") is None
    (tmp_path / "get_throttled").write_text("50005\n")
    assert read_throttled_sysfs(tmp_path / "get_throttled") == 0x50005
    assert read_throttled_sysfs(tmp_path / "missing") is None


def test_cpu_temperature_prefers_the_cpu_zone(tmp_path: Path) -> None:
    """The zone typed cpu-thermal wins; millidegrees become degrees."""
    for name, kind, millidegrees in (
        ("thermal_zone0", "battery", "31000"),
        ("thermal_zone1", "cpu-thermal", "48312"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "type").write_text(kind + "\n")
        (tmp_path / name / "temp").write_text(millidegrees + "\n")
    assert cpu_temperature_c(tmp_path) == 48.3
    assert cpu_temperature_c(tmp_path / "none") is None


def test_wifi_signal_is_read_from_proc_net_wireless(tmp_path: Path) -> None:
    """The level column of the first interface, in dBm."""
    (tmp_path / "wireless").write_text(
        "Inter-| sta-|   Quality        |   Discarded packets\n"
        " face | tus | link level noise |  nwid  crypt   frag\n"
        "wlan0: 0000   52.  -58.  -256        0      0      0\n"
    )
    assert wifi_signal_dbm(tmp_path / "wireless") == -58
    assert wifi_signal_dbm(tmp_path / "missing") is None


def test_report_is_a_valid_health_frame(tmp_path: Path) -> None:
    """A report on this machine passes the health schema with spool figures."""
    spool = Spool(tmp_path, 10_000_000)
    spool.open()
    spool.put(photo(1), datetime.now(UTC))
    camera = CameraStatus(
        ok=False, error="no\nframe", last_capture_at=datetime.now(UTC)
    )
    fields = asyncio.run(HealthReporter(spool, camera).report())

    protocol.validate_header(protocol.health(**fields))
    assert fields["spool_depth"] == 1
    assert fields["spool_bytes"] == len(photo(1))
    assert fields["camera_error"] == "no frame"
    assert fields["disk_free_bytes"] > 0


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    """Waits lie between zero and initial * 2**failures, capped at the maximum."""
    backoff = Backoff(1.0, 30.0, random.Random(5))
    for failures in range(10):
        assert 0 <= backoff.next_delay_s() <= min(30.0, 2.0**failures)
    backoff.reset()
    assert backoff.next_delay_s() <= 1.0
