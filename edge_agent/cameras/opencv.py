"""USB webcams through OpenCV (V4L2 on Linux)."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from edge_agent.cameras.base import Camera, CameraError, Photo, missing_package
from edge_agent.config import OpencvCameraConfig

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install opencv-python-headless (into the agent's venv)"


class OpencvCamera(Camera):
    """One photo per capture from a webcam, JPEG-encoded by OpenCV."""

    name = "opencv"

    def __init__(self, config: OpencvCameraConfig) -> None:
        self.config = config
        try:
            self._cv2: Any = importlib.import_module("cv2")
        except ImportError:
            raise missing_package(
                "opencv", "opencv-python-headless", INSTALL_HINT
            ) from None
        self._capture: Any = None

    def open(self) -> None:
        cv2 = self._cv2
        capture = cv2.VideoCapture(self.config.device)
        if not capture.isOpened():
            capture.release()
            raise CameraError(
                f"webcam {self.config.device!r} did not open; check the cable and "
                "that the agent's user is in the 'video' group"
            )
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        self._capture = capture

    def capture(self) -> Photo:
        if self._capture is None:
            self.open()
        frame = self._read_frame()
        cv2 = self._cv2
        quality = [int(cv2.IMWRITE_JPEG_QUALITY), self.config.jpeg_quality]
        ok, encoded = cv2.imencode(".jpg", frame, quality)
        if not ok:
            raise CameraError("OpenCV could not encode the webcam frame as JPEG")
        return Photo(encoded.tobytes(), meta={"camera": self.name})

    def _read_frame(self) -> Any:
        """Drop a few frames first: webcams settle exposure on a live stream."""
        for _ in range(self.config.warmup_frames):
            self._capture.grab()
        ok, frame = self._capture.read()
        if not ok or frame is None:
            self.close()
            raise CameraError(f"webcam {self.config.device!r} returned no frame")
        return frame

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
