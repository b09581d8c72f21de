"""The durable spool: crash safety, checksums, quarantine and the quota."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent.spool import Spool
from tests.edge_agent.support import photo

NOW = datetime(2026, 5, 1, 6, 30, tzinfo=UTC)


def open_spool(path: Path, quota_bytes: int = 10_000_000) -> Spool:
    spool = Spool(path, quota_bytes)
    spool.open()
    return spool


def test_photo_survives_reopen_and_reads_back_verified(tmp_path: Path) -> None:
    """A spooled photo is found again by a new Spool with its metadata."""
    spool = open_spool(tmp_path)
    entry = spool.put(photo(1), NOW, "image/jpeg", {"meta": {"camera": "x"}})
    assert entry is not None

    again = open_spool(tmp_path)
    [found] = again.entries()
    assert (found.sha256, found.captured_at) == (entry.sha256, NOW)
    read = again.read(found)
    assert read is not None and read.data == photo(1)
    assert read.extra == {"meta": {"camera": "x"}}


def test_sequence_continues_after_reopen(tmp_path: Path) -> None:
    """New photos sort after the ones left from the previous run."""
    first = open_spool(tmp_path).put(photo(1), NOW)
    second = open_spool(tmp_path).put(photo(2), NOW)
    assert first is not None and second is not None
    assert second.seq > first.seq


def test_same_photo_is_spooled_once(tmp_path: Path) -> None:
    """Putting identical bytes twice keeps one entry."""
    spool = open_spool(tmp_path)
    assert spool.put(photo(1), NOW) is not None
    assert spool.put(photo(1), NOW) is None
    assert spool.depth == 1


def test_unfinished_writes_are_cleared_on_open(tmp_path: Path) -> None:
    """Files left in tmp/ by a crash never become entries."""
    open_spool(tmp_path)
    (tmp_path / "tmp" / "000000000001-x.jpg.part").write_bytes(b"\xff\xd8 half")
    spool = open_spool(tmp_path)
    assert spool.depth == 0
    assert list((tmp_path / "tmp").iterdir()) == []


def test_corrupt_entry_is_quarantined_and_the_rest_continue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file whose bytes no longer match its sha256 is moved aside with a WARNING."""
    spool = open_spool(tmp_path)
    entries = [spool.put(photo(seed), NOW) for seed in range(3)]
    assert all(entries)
    bad = entries[1]
    assert bad is not None
    bad.path.write_bytes(bad.path.read_bytes()[:100])

    with caplog.at_level(logging.WARNING, logger="edge_agent.spool"):
        results = [spool.read(entry) for entry in spool.entries()]

    assert [result is not None for result in results] == [True, False, True]
    assert (tmp_path / "quarantine" / bad.name).exists()
    assert spool.depth == 2 and spool.quarantined == 1
    assert any("does not match its sha256" in m for m in caplog.messages)


def test_stray_file_in_entries_is_quarantined_on_open(tmp_path: Path) -> None:
    """A file that is not named like an entry is set aside, not sent."""
    open_spool(tmp_path)
    (tmp_path / "entries" / "holiday.jpg").write_bytes(photo(1))
    spool = open_spool(tmp_path)
    assert spool.depth == 0
    assert (tmp_path / "quarantine" / "holiday.jpg").exists()


def test_full_spool_drops_oldest_and_keeps_newest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the quota the oldest photos go first, each counted and warned."""
    size = len(photo(0))
    spool = open_spool(tmp_path, quota_bytes=size * 3 + size // 2)
    with caplog.at_level(logging.WARNING, logger="edge_agent.spool"):
        entries = [spool.put(photo(seed), NOW) for seed in range(6)]

    kept = [entry.sha256 for entry in spool.entries()]
    assert kept == [entry.sha256 for entry in entries[-3:] if entry is not None]
    assert spool.dropped == 3
    assert spool.size_bytes <= spool.quota_bytes
    assert sum("spool is full" in m for m in caplog.messages) == 3


def test_spool_keeps_min_free_bytes_of_its_disk_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A quota larger than the SD card drops the oldest photos at the disk's
    reserve instead of failing every write once the card is full."""
    size = len(photo(0))
    reserve = 50_000_000
    card = {"free": reserve + size * 2 + size // 2}  # room for two photos

    real_usage = shutil.disk_usage

    def usage(path: os.PathLike[str] | str) -> Any:
        return real_usage(path)._replace(free=card["free"])

    monkeypatch.setattr(shutil, "disk_usage", usage)
    spool = Spool(tmp_path, quota_bytes=10**12, min_free_bytes=reserve)
    spool.open()
    with caplog.at_level(logging.WARNING, logger="edge_agent.spool"):
        entries = []
        for seed in range(5):
            entry = spool.put(photo(seed), NOW)
            assert entry is not None
            entries.append(entry)
            card["free"] = reserve + size * 2 + size // 2 - spool.size_bytes

    kept = [entry.sha256 for entry in spool.entries()]
    assert kept == [entry.sha256 for entry in entries[-2:]]
    assert spool.dropped == 3
    assert sum("spool.min_free_bytes" in m for m in caplog.messages) == 3


def test_photo_larger_than_quota_is_still_kept(tmp_path: Path) -> None:
    """The newest photo is never the one dropped, even when it alone is too big."""
    spool = open_spool(tmp_path, quota_bytes=10_000)
    spool.put(photo(1, size=(32, 32)), NOW)
    big = spool.put(b"\xff\xd8\xff" + os.urandom(20_000), NOW)
    assert big is not None and big.size_bytes > 10_000
    assert [entry.sha256 for entry in spool.entries()] == [big.sha256]


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from pathlib import Path
    from edge_agent.spool import Spool
    from tests.edge_agent.support import photo

    spool = Spool(Path(sys.argv[1]), 10**9)
    spool.open()
    print("ready", flush=True)
    seed = 0
    while True:
        seed += 1
        spool.put(photo(seed, size=(200, 150)), datetime.now(UTC))
    """
)


@pytest.mark.parametrize("kill_after_s", [0.3, 0.7, 1.1])
def test_sigkill_mid_write_leaves_only_whole_photos(
    tmp_path: Path, kill_after_s: float
) -> None:
    """After SIGKILL at any moment, every entry found verifies and tmp/ is cleared."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == b"ready\n"
    time.sleep(kill_after_s)
    writer.send_signal(signal.SIGKILL)
    writer.wait()

    spool = open_spool(tmp_path)
    assert spool.depth > 0
    assert all(spool.read(entry) is not None for entry in spool.entries())
    assert spool.quarantined == 0
    assert list((tmp_path / "tmp").iterdir()) == []


def test_capture_time_before_1970_still_makes_a_valid_entry(tmp_path: Path) -> None:
    """A Pi clock gone wrong cannot turn a photo into an unreadable name."""
    spool = open_spool(tmp_path)
    spool.put(photo(1), datetime(1969, 12, 31, tzinfo=UTC))
    assert open_spool(tmp_path).depth == 1
