"""Helpers for agent tests: a real hub process, agent processes, photos."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.hub.support import Camera, add_camera, photo, sql

__all__ = [
    "AgentProcess",
    "Camera",
    "HubProcess",
    "add_camera",
    "agent_config",
    "capture_hashes",
    "free_port",
    "photo",
    "read_json",
    "sql",
    "wait_until",
    "write_photos",
]

START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Any, timeout_s: float = 60.0, step_s: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something true; fail on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {condition}")
        time.sleep(step_s)


class HubProcess:
    """``farmeye hub`` in a child process, on fixed ports so it can restart."""

    def __init__(self, tmp_path: Path, db_url: str, redis_url: str, **env: str) -> None:
        self.ingest_port = free_port()
        self.http_port = free_port()
        self.log_path = tmp_path / "hub.log"
        self.env = {
            **os.environ,
            "FARMEYE_DATA_DIR": str(tmp_path / "hub-data"),
            "FARMEYE_DATABASE_URL": db_url,
            "FARMEYE_REDIS_URL": redis_url,
            "FARMEYE_INGEST_HOST": "127.0.0.1",
            "FARMEYE_INGEST_PORT": str(self.ingest_port),
            "FARMEYE_HTTP_HOST": "127.0.0.1",
            "FARMEYE_HTTP_PORT": str(self.http_port),
            "FARMEYE_TRIAGE_PROCESSES": "1",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ingest_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws/events"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "farmeye.cli", "-v", "hub"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self._listening, START_TIMEOUT_S)

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"hub exited: {self.log_path.read_text()[-3000:]}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.ingest_port), timeout=1),
        ):
            return True
        return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class AgentProcess:
    """``farmeye agent --config FILE`` in a child process, logging to a file."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "farmeye.cli", "agent", "--config",
             str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a power cut."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code."""
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def assert_no_traceback(self) -> None:
        """Every failure on the way was handled: no crash, no ERROR with a trace."""
        assert "Traceback" not in self.log(), self.log()[-5000:]

    def log(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )


def agent_config(
    tmp_path: Path,
    camera: Camera | None,
    hub_address: str,
    *,
    camera_config: dict[str, Any] | None = None,
    name: str = "agent",
    **sections: Any,
) -> Path:
    """Write an agent YAML config for ``camera`` and return its path."""
    state_dir = tmp_path / f"{name}-state"
    config: dict[str, Any] = {
        "device_id": camera.device_id if camera else "dev_" + secrets.token_hex(10),
        "secret": camera.secret if camera else "not-a-real-secret",
        "state_dir": str(state_dir),
        "hub": {"address": hub_address},
        "camera": camera_config or {"type": "synthetic", "width": 64, "height": 48},
        "uploader": {"backoff_initial_s": 0.05, "backoff_max_s": 0.5},
        "health": {"interval_s": 1.0},
        "log_level": "DEBUG",
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def capture_hashes(db_url: str, device_id: str) -> list[str]:
    """sha256 of every capture row of ``device_id``."""
    rows = sql(db_url, "SELECT sha256 FROM captures WHERE device_id = %s", device_id)
    return [row[0] for row in rows]


def write_photos(folder: Path, count: int, start: int = 0) -> set[str]:
    """Drop ``count`` distinct small JPEGs into ``folder``; their sha256s."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    hashes = set()
    for index in range(start, start + count):
        data = photo(index, size=(64, 48))
        hashes.add(hashlib.sha256(data).hexdigest())
        temporary = folder / f".{index:06d}.part"
        temporary.write_bytes(data)
        temporary.rename(folder / f"{index:06d}.jpg")
    return hashes


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
