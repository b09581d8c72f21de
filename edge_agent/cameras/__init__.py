"""Camera backends, chosen by the config's ``camera.type``.

``synthetic`` and ``folder`` need nothing beyond the agent extra;
``picamera2`` and ``opencv`` import their library only when chosen.
"""

from __future__ import annotations

from edge_agent.cameras.base import (
    Camera,
    CameraError,
    CameraUnavailable,
    Photo,
)
from edge_agent.config import (
    CameraConfig,
    FolderCameraConfig,
    OpencvCameraConfig,
    Picamera2CameraConfig,
    SyntheticCameraConfig,
)

__all__ = ["Camera", "CameraError", "CameraUnavailable", "Photo", "make_camera"]


def make_camera(config: CameraConfig) -> Camera:
    """The backend for ``config``; raises CameraUnavailable if it cannot run here."""
    if isinstance(config, SyntheticCameraConfig):
        from edge_agent.cameras.synthetic import SyntheticCamera

        return SyntheticCamera(config)
    if isinstance(config, FolderCameraConfig):
        from edge_agent.cameras.folder import FolderCamera

        return FolderCamera(config)
    if isinstance(config, Picamera2CameraConfig):
        from edge_agent.cameras.picamera2 import Picamera2Camera

        return Picamera2Camera(config)
    if isinstance(config, OpencvCameraConfig):
        from edge_agent.cameras.opencv import OpencvCamera

        return OpencvCamera(config)
    raise CameraUnavailable(f"unknown camera type {config!r}")
