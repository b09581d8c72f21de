"""Raspberry Pi camera modules through picamera2.

picamera2 is tied to the system's libcamera, so on Raspberry Pi OS it comes
from apt (``python3-picamera2``) and the agent's venv is made with
``--system-site-packages`` to see it (docs/agent.md).
"""

from __future__ import annotations

import importlib
import io
import logging
from typing import Any

from edge_agent.cameras.base import Camera, CameraError, Photo, missing_package
from edge_agent.config import Picamera2CameraConfig

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "on Raspberry Pi OS run `sudo apt install python3-picamera2` and create the "
    "agent's venv with `python3 -m venv --system-site-packages`"
)


class Picamera2Camera(Camera):
    """Still photos from a camera module, JPEG-encoded by picamera2."""

    name = "picamera2"

    def __init__(self, config: Picamera2CameraConfig) -> None:
        self.config = config
        try:
            self._module: Any = importlib.import_module("picamera2")
        except ImportError:
            raise missing_package("picamera2", "picamera2", INSTALL_HINT) from None
        self._camera: Any = None

    def open(self) -> None:
        size = (self.config.width, self.config.height)
        try:
            camera = self._module.Picamera2(camera_num=self.config.camera_index)
            camera.configure(camera.create_still_configuration(main={"size": size}))
            camera.options["quality"] = self.config.jpeg_quality
            camera.start()
        except Exception as exc:  # libcamera raises several types for no camera
            raise CameraError(
                f"camera module {self.config.camera_index} did not start ({exc}); "
                "check the ribbon cable and `rpicam-hello --list-cameras`"
            ) from None
        self._camera = camera

    def capture(self) -> Photo:
        if self._camera is None:
            self.open()
        buffer = io.BytesIO()
        try:
            self._camera.capture_file(buffer, format="jpeg")
        except Exception as exc:
            self.close()
            raise CameraError(f"camera module capture failed: {exc}") from None
        return Photo(buffer.getvalue(), meta={"camera": self.name})

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            camera.stop()
            camera.close()
        except Exception as exc:
            logger.info("camera module did not close cleanly: %s", exc)
