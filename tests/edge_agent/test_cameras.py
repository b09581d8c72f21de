"""Camera backends: synthetic and folder work here; the hardware ones say
which package they need, and drive their library correctly when it is there
(the library stands in for the hardware)."""

from __future__ import annotations

import io
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from edge_agent.cameras import CameraError, CameraUnavailable, make_camera
from edge_agent.config import (
    FolderCameraConfig,
    OpencvCameraConfig,
    Picamera2CameraConfig,
    SyntheticCameraConfig,
)
from farmeye.commands.agent import agent
from tests.edge_agent.support import photo


def test_synthetic_frames_are_distinct_jpegs_of_the_configured_size() -> None:
    """Each synthetic capture is a new JPEG of width x height."""
    camera = make_camera(SyntheticCameraConfig(type="synthetic", width=80, height=60))
    first, second = camera.capture(), camera.capture()
    assert first is not None and second is not None
    assert first.data != second.data
    assert first.content_type == "image/jpeg"
    assert Image.open(io.BytesIO(first.data)).size == (80, 60)


def folder_camera(folder: Path) -> Any:
    camera = make_camera(FolderCameraConfig(type="folder", path=folder, min_age_s=0))
    camera.open()
    return camera


def test_folder_takes_oldest_name_first_and_deletes_only_when_released(
    tmp_path: Path,
) -> None:
    """The source file stays until the agent says the photo is spooled."""
    (tmp_path / "b.jpg").write_bytes(photo(2))
    (tmp_path / "a.jpg").write_bytes(photo(1))
    camera = folder_camera(tmp_path)

    taken = camera.capture()
    assert taken is not None and taken.data == photo(1)
    assert (tmp_path / "a.jpg").exists()
    taken.release()
    assert not (tmp_path / "a.jpg").exists()
    assert camera.capture().data == photo(2)


def test_folder_ignores_files_being_written(tmp_path: Path) -> None:
    """Dot files, .part files and files younger than min_age_s are left alone."""
    (tmp_path / ".incoming.jpg").write_bytes(photo(1))
    (tmp_path / "c.jpg.part").write_bytes(photo(2))
    assert folder_camera(tmp_path).capture() is None

    (tmp_path / "fresh.jpg").write_bytes(photo(3))
    patient = make_camera(FolderCameraConfig(type="folder", path=tmp_path))
    assert patient.capture() is None
    os.utime(tmp_path / "fresh.jpg", (0, 0))
    assert patient.capture() is not None


def test_folder_sets_aside_a_file_that_is_not_a_photo(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A non-image is renamed .rejected with a WARNING; the next photo is taken."""
    (tmp_path / "a.jpg").write_bytes(b"not a photo")
    (tmp_path / "b.png").write_bytes(photo(1))
    with caplog.at_level(logging.WARNING):
        taken = folder_camera(tmp_path).capture()
    assert taken is not None and taken.data == photo(1)
    assert (tmp_path / "a.jpg.rejected").exists()
    assert any("not a JPEG or PNG" in message for message in caplog.messages)


def test_folder_that_does_not_exist_is_a_camera_error(tmp_path: Path) -> None:
    """A missing folder fails at open with the path in the message."""
    camera = make_camera(FolderCameraConfig(type="folder", path=tmp_path / "none"))
    with pytest.raises(CameraError, match="none is not a folder"):
        camera.open()


def test_picamera2_missing_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without picamera2 the error says how to install it on Raspberry Pi OS."""
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(CameraUnavailable) as raised:
        make_camera(Picamera2CameraConfig(type="picamera2"))
    message = str(raised.value)
    assert "camera type 'picamera2' needs picamera2" in message
    assert "apt install python3-picamera2" in message
    assert "--system-site-packages" in message


def test_opencv_missing_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without cv2 the error names opencv-python-headless and the pip command."""
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(CameraUnavailable) as raised:
        make_camera(OpencvCameraConfig(type="opencv"))
    message = str(raised.value)
    assert "camera type 'opencv' needs opencv-python-headless" in message
    assert "pip install opencv-python-headless" in message


class FakePicamera2:
    """A camera module: answers picamera2's calls with a JPEG."""

    started = False

    def __init__(self, camera_num: int = 0) -> None:
        self.options: dict[str, Any] = {}

    def create_still_configuration(self, main: dict[str, Any]) -> dict[str, Any]:
        return {"main": main}

    def configure(self, config: dict[str, Any]) -> None:
        self.size = config["main"]["size"]

    def start(self) -> None:
        self.started = True

    def capture_file(self, output: io.BytesIO, format: str) -> None:
        assert self.started and format == "jpeg"
        Image.new("RGB", self.size, "brown").save(output, format="JPEG")

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        """Nothing to release."""


def test_picamera2_backend_configures_and_captures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The picamera2 backend asks for a still of the configured size as JPEG."""
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    camera = make_camera(Picamera2CameraConfig(type="picamera2", width=64, height=48))
    camera.open()
    taken = camera.capture()
    camera.close()
    assert taken is not None
    assert Image.open(io.BytesIO(taken.data)).size == (64, 48)


class FakeVideoCapture:
    """A webcam that yields one grey frame per read."""

    def __init__(self, device: object) -> None:
        self.properties: dict[int, float] = {}
        self.grabs = 0

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def set(self, prop: int, value: float) -> None:
        self.properties[prop] = value

    def grab(self) -> bool:
        self.grabs += 1
        return True

    def read(self) -> tuple[bool, object]:
        return True, "frame"

    def release(self) -> None:
        """Nothing to release."""


def fake_cv2() -> types.ModuleType:
    module = types.ModuleType("cv2")
    module.VideoCapture = FakeVideoCapture  # type: ignore[attr-defined]
    module.CAP_PROP_FRAME_WIDTH = 3  # type: ignore[attr-defined]
    module.CAP_PROP_FRAME_HEIGHT = 4  # type: ignore[attr-defined]
    module.IMWRITE_JPEG_QUALITY = 1  # type: ignore[attr-defined]

    class Encoded:
        def tobytes(self) -> bytes:
            return photo(7)

    module.imencode = lambda ext, frame, params: (True, Encoded())  # type: ignore[attr-defined]
    return module


def test_opencv_backend_warms_up_and_encodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The webcam backend sets the size, drops warm-up frames, returns a JPEG."""
    monkeypatch.setitem(sys.modules, "cv2", fake_cv2())
    camera = make_camera(
        OpencvCameraConfig(type="opencv", width=320, height=240, warmup_frames=3)
    )
    camera.open()
    capture = camera._capture  # type: ignore[attr-defined]
    taken = camera.capture()
    assert taken is not None and taken.data == photo(7)
    assert capture.properties == {3: 320, 4: 240}
    assert capture.grabs == 3


def test_agent_command_stops_with_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`farmeye agent` with an opencv camera and no cv2 exits 1 naming the package."""
    monkeypatch.setitem(sys.modules, "cv2", None)
    config = {
        "device_id": "dev_0123456789abcdef0123",
        "secret": "s3cret",
        "state_dir": str(tmp_path / "state"),
        "hub": {"address": "127.0.0.1:9"},
        "camera": {"type": "opencv"},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(agent, ["--config", str(path)])
    assert result.exit_code == 1
    assert "needs opencv-python-headless" in result.output
    assert "Traceback" not in result.output
