"""Content-addressed image store.

A photo is stored once under the SHA-256 of its bytes, so a retried upload
finds its file already there. :class:`ImageStore` is the small interface the
rest of the hub uses; :class:`DiskImageStore` keeps files in the hub's data
folder, and an object store (S3, MinIO) could implement the same methods.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from farmeye.heatmaps import decode_map, render_overlay
from farmeye.imaging import preprocess, thumbnail

THUMBNAIL_SIDE_PX = 256
"""Longest side of the thumbnails served to dashboards."""

HEATMAP_SIDE_PX = 448
"""Side of the painted heatmaps: the square the model saw, at twice its size."""

_KEY_PATTERN = re.compile(r"^[0-9a-f]{64}$")

logger = logging.getLogger(__name__)


class StoreError(OSError):
    """A photo that could not be written or read."""


class StoreFull(StoreError):
    """The disk is down to the space the store must leave free."""


class ImageStore(Protocol):
    """Where photos live, addressed by the hex SHA-256 of their bytes."""

    def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its key."""

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``, or raise FileNotFoundError."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""

    def thumbnail(self, key: str) -> bytes:
        """A small JPEG of the photo under ``key``, made once and kept."""

    def heatmap(self, key: str, evidence: bytes) -> bytes:
        """A PNG of the photo under ``key`` with an evidence map painted over
        it (:mod:`farmeye.heatmaps`), made once per map and kept."""

    def delete(self, key: str) -> None:
        """Remove the photo under ``key`` and all made from it; gone is fine."""


def content_key(data: bytes) -> str:
    """The store key of ``data``: its hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def check_key(key: str) -> str:
    """Return ``key`` if it is a hex SHA-256, else raise ValueError."""
    if not _KEY_PATTERN.match(key):
        raise ValueError(f"store key must be 64 lowercase hex digits, got {key!r}")
    return key


class DiskImageStore:
    """Photos as files: ``ROOT/images/ab/cd/<sha256>.jpg``.

    Writes go to a temporary file in the target folder, which is fsynced,
    renamed into place and followed by an fsync of the folder, so a photo
    whose ``put`` returned survives a power cut.

    A new photo is refused with :class:`StoreFull` when writing it would
    leave less than ``min_free_bytes`` free on the disk, so that a hub left
    running for months stops taking photos (the cameras keep them in their
    spools) before PostgreSQL or the system on the same disk runs out.
    """

    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self._refusing = False
        self.images_dir = self.root / "images"
        self.thumbnails_dir = self.root / "thumbnails"
        self.heatmaps_dir = self.root / "heatmaps"
        self.images_dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where the photo under ``key`` lives (it may not exist yet)."""
        check_key(key)
        return self.images_dir / key[:2] / key[2:4] / f"{key}.jpg"

    def put(self, data: bytes) -> str:
        key = content_key(data)
        target = self.path(key)
        if not target.exists():
            self._make_room(len(data))
            _write_durably(target, data)
        return key

    def free_bytes(self) -> int:
        """Bytes free on the disk that holds the photos."""
        try:
            return shutil.disk_usage(self.images_dir).free
        except OSError as exc:
            raise StoreError(
                f"cannot read the free space under {self.images_dir}: {exc}"
            ) from exc

    def space_problem(self, size: int = 0) -> str | None:
        """Why a new photo of ``size`` bytes would be refused for lack of
        space, or None."""
        if not self.min_free_bytes:
            return None
        free = self.free_bytes()
        if free - size >= self.min_free_bytes:
            return None
        return (
            f"{free} bytes free under {self.images_dir}, "
            f"where {self.min_free_bytes} are kept free"
        )

    def _make_room(self, size: int) -> None:
        problem = self.space_problem(size)
        if problem is None:
            if self._refusing:
                logger.info("taking photos again: the disk has room")
                self._refusing = False
            return
        if not self._refusing:
            logger.error("refusing new photos: %s", problem)
            self._refusing = True
        raise StoreFull(problem)

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
        (self.thumbnails_dir / key[:2] / f"{key}.jpg").unlink(missing_ok=True)
        for painted in (self.heatmaps_dir / key[:2]).glob(f"{key}-*.png"):
            painted.unlink(missing_ok=True)

    def heatmap(self, key: str, evidence: bytes) -> bytes:
        tag = hashlib.sha256(evidence).hexdigest()[:16]

        def paint() -> bytes:
            # The square the model saw (same preprocessing), at a readable size.
            pixels = preprocess(self.get(key), HEATMAP_SIDE_PX)
            return render_overlay(pixels, decode_map(evidence))

        return self._derived(self.heatmaps_dir, key, f"-{tag}.png", paint)

    def thumbnail(self, key: str) -> bytes:
        return self._derived(
            self.thumbnails_dir,
            key,
            ".jpg",
            lambda: thumbnail(self.get(key), THUMBNAIL_SIDE_PX),
        )

    def _derived(
        self, folder: Path, key: str, suffix: str, make: Callable[[], bytes]
    ) -> bytes:
        """An image made from the photo under ``key`` once, then read back."""
        target = folder / check_key(key)[:2] / f"{key}{suffix}"
        try:
            return target.read_bytes()
        except FileNotFoundError:
            pass
        made = make()
        # A lost copy is made again on the next request: no fsync needed.
        _write_durably(target, made, sync=False)
        return made


def _write_durably(target: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``target`` atomically, fsyncing file and folder."""
    folder = target.parent
    if not folder.is_dir():
        _make_dirs_durably(folder)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            if sync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise StoreError(f"cannot store photo at {target}: {exc}") from exc
    if sync:
        _fsync_dir(folder)


def _make_dirs_durably(folder: Path) -> None:
    """Create ``folder`` and fsync each parent that gained an entry."""
    missing = [folder, *(p for p in folder.parents if not p.exists())]
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        _fsync_dir(created.parent)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
