"""The durable spool: photos on disk until the hub has acknowledged them.

Layout of the spool folder::

    entries/   one file per photo, named SEQ-MILLIS-SHA256.EXT, plus an
               optional SEQ-MILLIS-SHA256.json sidecar (triage verdict, meta)
    tmp/       files being written; whatever is here at start-up is debris
    quarantine/ entries that failed their checksum, kept for a person to look at

A photo is written to ``tmp/``, flushed with fsync, renamed into
``entries/`` and the folder is fsynced: after a SIGKILL or a power cut an
entry is either complete or absent. The name carries the photo's sha256 and
every read checks it, so a file torn by a failing SD card is never sent as a
photo; it is moved to ``quarantine/`` with a WARNING and the rest carry on.

The spool is bounded by ``quota_bytes``, and by the disk: it never fills the
file system past ``min_free_bytes`` of free space, which the system and its
logs need more than an old photo. When a new photo does not fit, the oldest
photos are deleted until it does; the newest photo is always kept. Each
deleted photo is counted in :attr:`Spool.dropped` and reported to the hub in
the health frames.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

ENTRY_NAME = re.compile(
    r"^(?P<seq>[0-9]{12})-(?P<millis>[0-9]{13})-(?P<sha256>[0-9a-f]{64})\.(?P<ext>jpg|png)$"
)
"""Spool entry file name; anything else in ``entries/`` is moved aside."""

MAX_MILLIS = 10**13 - 1
"""Capture times are stored as 13 digits of milliseconds (until year 2286)."""

SIDECAR_SUFFIX = ".json"
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png"}
EXTENSIONS = {value: key for key, value in CONTENT_TYPES.items()}


class SpoolError(RuntimeError):
    """The spool folder cannot be used (permissions, missing disk)."""


@dataclass(frozen=True)
class Entry:
    """One spooled photo, described by its file name."""

    seq: int
    captured_at: datetime
    sha256: str
    content_type: str
    size_bytes: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(SIDECAR_SUFFIX)


@dataclass(frozen=True)
class SpooledPhoto:
    """A verified photo read back from the spool, ready to upload."""

    entry: Entry
    data: bytes
    extra: dict[str, Any]


class Spool:
    """The spool folder; not thread-safe, call it from one thread at a time."""

    def __init__(self, path: Path, quota_bytes: int, min_free_bytes: int = 0) -> None:
        self.path = path
        self.quota_bytes = quota_bytes
        self.min_free_bytes = min_free_bytes
        """Free space on the spool's file system that photos may not take."""
        self.entries_dir = path / "entries"
        self.tmp_dir = path / "tmp"
        self.quarantine_dir = path / "quarantine"
        self.dropped = 0
        """Photos deleted unsent because the spool was full, since start."""
        self.quarantined = 0
        """Entries moved aside because they were unreadable, since start."""
        self._entries: dict[int, Entry] = {}
        self._order: list[int] = []
        self._hashes: dict[str, int] = {}
        self._bytes = 0
        self._next_seq = 1

    # Start-up

    def open(self) -> None:
        """Create the folders, clear debris, and index what survived."""
        try:
            for folder in (self.entries_dir, self.tmp_dir, self.quarantine_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(
                f"cannot create spool folder {self.path}: {exc.strerror}; "
                "check spool.path and its permissions"
            ) from None
        self._clear_tmp()
        self._index()
        logger.info(
            "spool %s holds %s photos (%s bytes)", self.path, self.depth, self._bytes
        )

    def _clear_tmp(self) -> None:
        """Files in tmp/ were never renamed: the write did not finish."""
        for leftover in self.tmp_dir.iterdir():
            logger.info("removing unfinished spool write %s", leftover.name)
            leftover.unlink(missing_ok=True)

    def _index(self) -> None:
        sidecars = set()
        for path in self.entries_dir.iterdir():
            if path.suffix == SIDECAR_SUFFIX:
                sidecars.add(path)
                continue
            entry = _parse_entry(path)
            if entry is None:
                self._quarantine(path, "its name is not a spool entry name")
                continue
            self._add(entry)
        self._next_seq = (self._order[-1] + 1) if self._order else 1
        for sidecar in sidecars:
            if (
                not sidecar.with_suffix(".jpg").exists()
                and not sidecar.with_suffix(".png").exists()
            ):
                sidecar.unlink(missing_ok=True)

    # Queries

    @property
    def depth(self) -> int:
        """Photos waiting for an ack."""
        return len(self._order)

    @property
    def size_bytes(self) -> int:
        """Bytes those photos take (photo files only)."""
        return self._bytes

    def oldest(self) -> Entry | None:
        return self._entries[self._order[0]] if self._order else None

    def next_after(self, seq: int) -> Entry | None:
        """The oldest entry with a sequence number above ``seq``."""
        index = bisect.bisect_right(self._order, seq)
        if index == len(self._order):
            return None
        return self._entries[self._order[index]]

    def entries(self) -> list[Entry]:
        """Every entry, oldest first."""
        return [self._entries[seq] for seq in self._order]

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._hashes

    # Writing

    def put(
        self,
        data: bytes,
        captured_at: datetime,
        content_type: str = "image/jpeg",
        extra: dict[str, Any] | None = None,
    ) -> Entry | None:
        """Store one photo durably; ``None`` when the same photo is already here.

        ``extra`` (triage verdict, meta) goes to a sidecar written first, so a
        photo that exists always has the sidecar it was given.
        """
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 in self._hashes:
            logger.debug("photo %s is already in the spool", sha256[:12])
            return None
        self._make_room(len(data))
        entry = self._new_entry(sha256, captured_at, content_type, len(data))
        if extra:
            _write_durably(
                self.tmp_dir, entry.sidecar, json.dumps(extra).encode(), sync_dir=False
            )
        _write_durably(self.tmp_dir, entry.path, data, sync_dir=True)
        self._add(entry)
        self._next_seq = entry.seq + 1
        return entry

    def _new_entry(
        self, sha256: str, captured_at: datetime, content_type: str, size_bytes: int
    ) -> Entry:
        # A camera clock before 1970 must not make a name that fails to parse.
        millis = min(max(int(captured_at.timestamp() * 1000), 0), MAX_MILLIS)
        ext = EXTENSIONS.get(content_type)
        if ext is None:
            raise ValueError(f"content type {content_type!r} is not a spooled type")
        name = f"{self._next_seq:012d}-{millis:013d}-{sha256}.{ext}"
        return Entry(
            seq=self._next_seq,
            captured_at=_from_millis(millis),
            sha256=sha256,
            content_type=content_type,
            size_bytes=size_bytes,
            path=self.entries_dir / name,
        )

    def _make_room(self, incoming_bytes: int) -> None:
        """Drop the oldest photos until ``incoming_bytes`` fit under the limit."""
        limit_bytes, limit = self._limit()
        while self._order and self._bytes + incoming_bytes > limit_bytes:
            oldest = self._entries[self._order[0]]
            self.remove(oldest)
            self.dropped += 1
            logger.warning(
                "spool is full (%s): dropped unsent photo %s taken at %s",
                limit,
                oldest.name,
                oldest.captured_at.isoformat(),
            )

    def _limit(self) -> tuple[int, str]:
        """The most bytes the spool may hold now, and what sets it."""
        quota = (self.quota_bytes, f"quota {self.quota_bytes} bytes")
        try:
            free_bytes = shutil.disk_usage(self.entries_dir).free
        except OSError:
            return quota  # the write that follows will say what is wrong
        room_bytes = self._bytes + free_bytes - self.min_free_bytes
        if room_bytes >= self.quota_bytes:
            return quota
        return room_bytes, (
            f"{free_bytes} bytes free on its disk, "
            f"{self.min_free_bytes} kept free (spool.min_free_bytes)"
        )

    # Reading and removing

    def read(self, entry: Entry) -> SpooledPhoto | None:
        """The verified photo of ``entry``; ``None`` if it is gone or corrupt."""
        try:
            data = entry.path.read_bytes()
        except FileNotFoundError:
            self._forget(entry)
            return None
        except OSError as exc:
            self.quarantine_entry(entry, f"it cannot be read ({exc.strerror})")
            return None
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            self.quarantine_entry(entry, "its content does not match its sha256")
            return None
        return SpooledPhoto(entry, data, self._read_sidecar(entry))

    def _read_sidecar(self, entry: Entry) -> dict[str, Any]:
        """A broken sidecar only loses advisory data: warn and upload without it."""
        try:
            value = json.loads(entry.sidecar.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable sidecar of %s: %s", entry.name, exc)
            return {}
        return value if isinstance(value, dict) else {}

    def remove(self, entry: Entry) -> None:
        """Delete an acknowledged (or dropped) photo; a missing one is fine.

        The folder is not fsynced: if the deletion is lost in a power cut the
        photo is sent again and the hub, idempotent by sha256, ignores it.
        """
        entry.path.unlink(missing_ok=True)
        entry.sidecar.unlink(missing_ok=True)
        self._forget(entry)

    def _add(self, entry: Entry) -> None:
        self._entries[entry.seq] = entry
        bisect.insort(self._order, entry.seq)
        self._hashes[entry.sha256] = entry.seq
        self._bytes += entry.size_bytes

    def _forget(self, entry: Entry) -> None:
        if self._entries.pop(entry.seq, None) is None:
            return
        index = bisect.bisect_left(self._order, entry.seq)
        del self._order[index]
        self._hashes.pop(entry.sha256, None)
        self._bytes -= entry.size_bytes

    def quarantine_entry(self, entry: Entry, reason: str) -> None:
        """Move ``entry`` aside with a WARNING; the rest of the spool carries on."""
        self._forget(entry)
        self._quarantine(entry.path, reason)
        entry.sidecar.unlink(missing_ok=True)

    def _quarantine(self, path: Path, reason: str) -> None:
        """Move a bad file aside for a person, and carry on with the rest."""
        self.quarantined += 1
        target = self.quarantine_dir / path.name
        logger.warning(
            "moving spool file %s to %s: %s", path.name, self.quarantine_dir, reason
        )
        try:
            os.replace(path, target)
        except OSError as exc:
            logger.warning("cannot move %s aside (%s); deleting it", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()


def _parse_entry(path: Path) -> Entry | None:
    match = ENTRY_NAME.match(path.name)
    if match is None:
        return None
    try:
        size_bytes = path.stat().st_size
    except OSError:
        return None
    return Entry(
        seq=int(match["seq"]),
        captured_at=_from_millis(int(match["millis"])),
        sha256=match["sha256"],
        content_type=CONTENT_TYPES[match["ext"]],
        size_bytes=size_bytes,
        path=path,
    )


def _from_millis(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)


def _write_durably(tmp_dir: Path, target: Path, data: bytes, *, sync_dir: bool) -> None:
    """Write to tmp/, fsync, rename to ``target``, then fsync its folder."""
    temporary = tmp_dir / (target.name + ".part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, target)
    if sync_dir:
        fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AsyncSpool:
    """The spool for asyncio code: every call runs on one worker thread.

    One thread keeps the calls in order and the event loop free while an SD
    card takes its time over an fsync.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    async def open(self) -> None:
        await self._call(self.spool.open)

    async def put(
        self,
        data: bytes,
        captured_at: datetime,
        content_type: str,
        extra: dict[str, Any] | None = None,
    ) -> Entry | None:
        return await self._call(self.spool.put, data, captured_at, content_type, extra)

    async def next_after(self, seq: int) -> Entry | None:
        return await self._call(self.spool.next_after, seq)

    async def read(self, entry: Entry) -> SpooledPhoto | None:
        return await self._call(self.spool.read, entry)

    async def remove(self, entry: Entry) -> None:
        await self._call(self.spool.remove, entry)

    async def quarantine(self, entry: Entry, reason: str) -> None:
        await self._call(self.spool.quarantine_entry, entry, reason)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
