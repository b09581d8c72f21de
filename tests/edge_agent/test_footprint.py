"""The agent runs on the agent extra alone, in little memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.edge_agent.support import (
    Camera,
    HubProcess,
    agent_config,
    capture_hashes,
    photo,
    wait_until,
)
from tests.hub.support import add_user

FORBIDDEN = ("tensorflow", "keras", "celery", "psycopg2")

RSS_LIMIT_BYTES = 150 * 1024 * 1024
"""Far above the measured figure (docs/agent.md), far below a Pi Zero's 512 MB."""

RUNNER = textwrap.dedent(
    """
    import atexit, json, sys
    from pathlib import Path

    def report():
        loaded = sorted({name.split(".")[0] for name in sys.modules})
        Path(sys.argv[1]).write_text(json.dumps(loaded))

    atexit.register(report)
    from farmeye.cli import main
    main(["agent", "--config", sys.argv[2]])
    """
)


def resident_bytes(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0]) * 1024
    return figures


def camera_config(kind: str, tmp_path: Path) -> dict[str, object]:
    """A synthetic camera, or a folder of 1280x960 JPEGs, as a Pi camera takes."""
    if kind == "synthetic":
        return {"type": "synthetic", "width": 1280, "height": 960}
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for seed in range(12):
        (inbox / f"{seed:03d}.jpg").write_bytes(photo(seed, size=(1280, 960)))
    return {"type": "folder", "path": str(inbox), "min_age_s": 0}


@pytest.mark.parametrize("kind", ["folder", "synthetic"])
def test_running_agent_imports_no_heavy_package_and_stays_small(
    tmp_path: Path, hub_process: HubProcess, camera: Camera, db_url: str, kind: str
) -> None:
    """A working agent loads no TensorFlow, Keras, Celery, psycopg2; RSS stays low."""
    token = add_user(db_url, "viewer", "farm-a", role="viewer")
    config = agent_config(
        tmp_path, camera, hub_process.address,
        camera_config=camera_config(kind, tmp_path),
        schedule={"interval_s": 0.5},
        display={"enabled": True, "url": hub_process.ws_url, "token": token},
        log_level="INFO",
    )  # fmt: skip
    modules_file = tmp_path / "modules.json"
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(modules_file), str(config)],
        stdout=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
    )
    status_file = tmp_path / "agent-state" / "status.json"
    try:
        wait_until(lambda: len(capture_hashes(db_url, camera.device_id)) >= 10, 120)
        wait_until(
            lambda: status_file.exists() and '"triage": {' in status_file.read_text()
        )
        memory = resident_bytes(process.pid)
    finally:
        process.terminate()
        assert process.wait(30) == 0

    loaded = json.loads(modules_file.read_text())
    assert "edge_agent" in loaded and "websockets" in loaded
    assert not set(FORBIDDEN) & set(loaded)
    print(f"agent resident memory with the {kind} camera: {memory}")
    assert memory["VmHWM"] < RSS_LIMIT_BYTES
