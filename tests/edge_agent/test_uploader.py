"""The uploader against a real hub: TLS, pipelining and the upload header."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edge_agent.local_triage import LocalTriage
from farmeye import protocol
from farmeye.labels import LABELS
from tests.edge_agent.support import (
    AgentProcess,
    Camera,
    HubProcess,
    agent_config,
    capture_hashes,
    photo,
    sql,
    wait_until,
)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "hub.pem", tmp_path / "hub.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_uploads_over_tls_verified_against_the_hubs_ca(
    tmp_path: Path, db_url: str, redis_db_url: str, camera: Camera
) -> None:
    """With hub.tls and ca_file the agent verifies the hub and uploads."""
    cert, key = self_signed(tmp_path)
    hub = HubProcess(
        tmp_path, db_url, redis_db_url,
        FARMEYE_TLS_CERT=str(cert), FARMEYE_TLS_KEY=str(key),
    )  # fmt: skip
    hub.start()
    config = agent_config(
        tmp_path, camera, hub.address,
        hub={"address": hub.address, "tls": True, "ca_file": str(cert)},
        schedule={"interval_s": 0.2},
    )  # fmt: skip
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        wait_until(lambda: len(capture_hashes(db_url, camera.device_id)) >= 3)
    finally:
        agent.stop()
        hub.stop()
    agent.assert_no_traceback()


def test_tls_to_an_untrusted_hub_is_refused(
    tmp_path: Path, db_url: str, redis_db_url: str, camera: Camera
) -> None:
    """Without the hub's CA the agent does not upload, and keeps trying politely."""
    cert, key = self_signed(tmp_path)
    hub = HubProcess(
        tmp_path, db_url, redis_db_url,
        FARMEYE_TLS_CERT=str(cert), FARMEYE_TLS_KEY=str(key),
    )  # fmt: skip
    hub.start()
    config = agent_config(
        tmp_path, camera, hub.address,
        hub={"address": hub.address, "tls": True},
        schedule={"interval_s": 0.2},
    )  # fmt: skip
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in agent.log())
    finally:
        agent.stop()
        hub.stop()
    assert capture_hashes(db_url, camera.device_id) == []
    agent.assert_no_traceback()


def test_hub_stores_the_cameras_capture_time(
    tmp_path: Path, hub_process: HubProcess, camera: Camera, db_url: str
) -> None:
    """The hub stores the camera's capture time, not the arrival time."""
    config = agent_config(
        tmp_path, camera, hub_process.address, schedule={"interval_s": 0.2}
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        wait_until(lambda: len(capture_hashes(db_url, camera.device_id)) >= 3)
    finally:
        agent.stop()
    rows = sql(
        db_url,
        "SELECT captured_at <= received_at, content_type FROM captures "
        "WHERE device_id = %s",
        camera.device_id,
    )
    assert rows and all(row == (True, "image/jpeg") for row in rows)


def test_on_device_triage_verdict_is_a_valid_upload_field() -> None:
    """The shipped model's verdict fits the upload header's triage field."""
    verdict = LocalTriage.load().verdict(photo(3))
    assert verdict is not None and verdict["label"] in LABELS
    header = protocol.upload_header(1, "0" * 64, "2026-05-01T06:30:00Z", triage=verdict)
    protocol.validate_header(header, payload_bytes=1)


def test_agent_with_on_device_triage_uploads(
    tmp_path: Path, hub_process: HubProcess, camera: Camera, db_url: str
) -> None:
    """triage.enabled: photos still reach the hub, with the verdict attached."""
    config = agent_config(
        tmp_path, camera, hub_process.address,
        schedule={"interval_s": 0.2}, triage={"enabled": True},
    )  # fmt: skip
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        wait_until(lambda: len(capture_hashes(db_url, camera.device_id)) >= 3)
    finally:
        agent.stop()
    assert "on-device triage uses model" in agent.log()
    agent.assert_no_traceback()
