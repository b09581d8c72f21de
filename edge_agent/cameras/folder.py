"""Photos that another program drops into a folder.

Each capture takes the first photo in name order (so timestamped names go
oldest first) and deletes it only once it is safe in the spool. Writers
should create files under a name starting with a dot or ending in ``.part``
and rename them when complete; ``min_age_s`` covers writers that cannot.
A file that is not a JPEG or PNG, or cannot be read, is renamed to
``NAME.rejected`` with a WARNING and never taken again.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.cameras.base import Camera, CameraError, Photo
from edge_agent.config import FolderCameraConfig

logger = logging.getLogger(__name__)

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FolderCamera(Camera):
    """Takes photos dropped into ``config.path``, oldest name first."""

    name = "folder"

    def __init__(self, config: FolderCameraConfig) -> None:
        self.folder = config.path.expanduser()
        self.min_age_s = config.min_age_s

    def open(self) -> None:
        if not self.folder.is_dir():
            raise CameraError(
                f"folder camera path {self.folder} is not a folder; create it or "
                "fix camera.path"
            )

    def capture(self) -> Photo | None:
        while (path := self._first_candidate()) is not None:
            photo = self._load(path)
            if photo is not None:
                return photo
        return None

    def _first_candidate(self) -> Path | None:
        try:
            names = [
                entry.name
                for entry in os.scandir(self.folder)
                if _is_candidate(entry.name) and entry.is_file()
            ]
        except OSError as exc:
            raise CameraError(f"cannot list {self.folder}: {exc.strerror}") from None
        if not names:
            return None
        path = self.folder / min(names)
        if self.min_age_s and time.time() - _mtime(path) < self.min_age_s:
            return None
        return path

    def _load(self, path: Path) -> Photo | None:
        try:
            data = path.read_bytes()
            modified_s = _mtime(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._reject(path, f"cannot be read ({exc.strerror})")
            return None
        content_type = _content_type(data)
        if content_type is None:
            self._reject(path, "is not a JPEG or PNG photo")
            return None
        return Photo(
            data,
            content_type=content_type,
            captured_at=datetime.fromtimestamp(modified_s, UTC),
            meta={"camera": self.name, "file": path.name[:200]},
            on_done=lambda: path.unlink(missing_ok=True),
        )

    def _reject(self, path: Path, reason: str) -> None:
        """Rename a file that can never be a photo, so it is not taken again."""
        logger.warning("%s %s; renaming it to %s.rejected", path, reason, path.name)
        try:
            os.replace(path, path.with_name(path.name + ".rejected"))
        except OSError as exc:
            raise CameraError(f"cannot set {path} aside: {exc.strerror}") from None


def _is_candidate(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in PHOTO_SUFFIXES


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def _content_type(data: bytes) -> str | None:
    if data.startswith(JPEG_MAGIC):
        return "image/jpeg"
    if data.startswith(PNG_MAGIC):
        return "image/png"
    return None
