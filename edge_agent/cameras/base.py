"""The camera interface every backend implements.

Backends are blocking (camera libraries are), so the agent calls them from a
worker thread. A backend whose library is missing raises
:class:`CameraUnavailable` from :func:`edge_agent.cameras.open_camera` with
the package to install; a backend that fails to take one photo raises
:class:`CameraError` and is asked again at the next tick.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class CameraError(RuntimeError):
    """The camera could not take a photo this time."""


class CameraUnavailable(CameraError):
    """The backend cannot run here (library or device missing); not retried."""


@dataclass
class Photo:
    """One photo as encoded bytes, with when and how it was taken."""

    data: bytes
    content_type: str = "image/jpeg"
    captured_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    meta: dict[str, Any] = field(default_factory=dict)
    on_done: Callable[[], None] | None = None
    """Called once the photo is safe in the spool or deliberately skipped;
    the folder camera deletes its source file then, and not before."""

    def release(self) -> None:
        """The agent is done with the photo's source."""
        if self.on_done is not None:
            self.on_done()


class Camera(abc.ABC):
    """A source of photos."""

    name: str = "camera"

    def open(self) -> None:  # noqa: B027 (optional hook, most backends need none)
        """Acquire the device; called once before the first capture."""

    @abc.abstractmethod
    def capture(self) -> Photo | None:
        """Take one photo; ``None`` when there is nothing to take (empty folder)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the device."""


def missing_package(camera_type: str, package: str, how: str) -> CameraUnavailable:
    """The error for a backend whose Python package is not installed."""
    return CameraUnavailable(
        f"camera type {camera_type!r} needs {package}, which is not installed: {how}"
    )
