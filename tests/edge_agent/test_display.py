"""The verdict display: the coop's verdicts from the hub's event stream reach
the status file, the console and plug-in renderers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import RendererConfig
from edge_agent.display import (
    ConsoleRenderer,
    Display,
    DisplayError,
    StatusBoard,
    _Ended,
    load_renderer,
    status_line,
)
from farmeye.events import make_event
from farmeye.labels import LABELS
from tests.edge_agent.support import (
    AgentProcess,
    Camera,
    HubProcess,
    agent_config,
    read_json,
    wait_until,
)
from tests.hub.support import add_user


class FileRenderer:
    """A plug-in that appends each status it is shown to a file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def show(self, status: dict[str, Any]) -> None:
        with self.path.open("a") as stream:
            stream.write(json.dumps(status) + "\n")

    def close(self) -> None:
        with self.path.open("a") as stream:
            stream.write("closed\n")


def triage_event(coop_id: int, label: str = "coccidiosis") -> dict[str, Any]:
    return make_event(
        "triage", farm_id=1, coop_id=coop_id, device_id="dev_0123456789abcdef",
        capture_id=7, label=label, scores={label: 0.91}, model_version="t1",
    )  # fmt: skip


def test_board_keeps_latest_verdict_of_its_coop_only(tmp_path: Path) -> None:
    """Events of other coops and other types leave the board unchanged."""
    board = StatusBoard(tmp_path / "status.json", [])
    board.set(coop_id=3)
    assert not board.apply(triage_event(coop_id=4))
    assert not board.apply({**triage_event(coop_id=3), "type": "capture"})
    assert board.apply(triage_event(coop_id=3))
    assert board.status["latest"]["label"] == "coccidiosis"
    assert board.status["triage"]["capture_id"] == 7


def test_status_file_is_written_whole(tmp_path: Path) -> None:
    """publish() leaves a complete JSON file and no temporary file behind."""
    board = StatusBoard(tmp_path / "status.json", [])
    board.set(coop_id=3, connected=True)
    board.apply(triage_event(coop_id=3))
    asyncio.run(board.publish())
    status = read_json(tmp_path / "status.json")
    assert status["latest"]["label"] == "coccidiosis" and status["connected"]
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_console_renderer_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The console line names the coop, verdict, score and capture."""
    board = StatusBoard(Path("unused"), [])
    board.set(coop_id=3, connected=True)
    board.apply(triage_event(coop_id=3))
    ConsoleRenderer().show(board.status)
    assert capsys.readouterr().out == (
        "coop 3: coccidiosis (0.91, triage of capture 7); hub: online\n"
    )
    assert status_line({"coop_id": 3}) == "coop 3: no verdict yet; hub: offline"


def test_plugin_renderer_is_loaded_by_dotted_path(tmp_path: Path) -> None:
    """type 'module:Class' builds the class with its options."""
    out = tmp_path / "shown.txt"
    renderer = load_renderer(
        RendererConfig(
            type="tests.edge_agent.test_display:FileRenderer",
            options={"path": str(out)},
        )
    )
    renderer.show({"coop_id": 1})
    assert json.loads(out.read_text()) == {"coop_id": 1}


def test_unknown_renderer_is_a_clear_error() -> None:
    """A renderer name that resolves to nothing says what is accepted."""
    with pytest.raises(DisplayError, match="use 'console', 'module:Class'"):
        load_renderer(RendererConfig(type="lcd9000"))
    with pytest.raises(DisplayError, match="cannot be loaded"):
        load_renderer(RendererConfig(type="no_such_module:Panel"))


def test_display_shows_the_coops_verdicts_from_a_real_hub(
    tmp_path: Path, hub_process: HubProcess, camera: Camera, db_url: str
) -> None:
    """The agent's own photos come back as triage verdicts on every renderer."""
    token = add_user(db_url, "viewer", "farm-a", role="viewer")
    shown = tmp_path / "shown.jsonl"
    config = agent_config(
        tmp_path, camera, hub_process.address,
        schedule={"interval_s": 0.5},
        display={
            "enabled": True, "url": hub_process.ws_url, "token": token,
            "renderers": [
                {"type": "console"},
                {"type": "tests.edge_agent.test_display:FileRenderer",
                 "options": {"path": str(shown)}},
            ],
        },
    )  # fmt: skip
    agent = AgentProcess(config, tmp_path / "agent.log")
    status_file = tmp_path / "agent-state" / "status.json"

    def verdict() -> dict[str, Any] | None:
        if not status_file.exists():
            return None
        return read_json(status_file).get("triage")  # type: ignore[no-any-return]

    agent.start()
    try:
        triage = wait_until(verdict, 90)
    finally:
        assert agent.stop() == 0

    status = read_json(status_file)
    assert str(status["coop_id"]) == str(camera.coop_id)
    assert triage["label"] in LABELS
    assert f"coop {camera.coop_id}: " in agent.log()
    assert "triage of capture" in agent.log()
    lines = shown.read_text().splitlines()
    assert lines[-1] == "closed"
    assert any(json.loads(line).get("triage") for line in lines[:-1])
    agent.assert_no_traceback()


def test_refused_display_token_is_a_clear_error(
    tmp_path: Path, hub_process: HubProcess, camera: Camera
) -> None:
    """A bad token is one ERROR naming the fix; uploads go on."""
    config = agent_config(
        tmp_path, camera, hub_process.address,
        schedule={"interval_s": 3600},
        display={"enabled": True, "url": hub_process.ws_url, "token": "fet_bad"},
    )  # fmt: skip
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        wait_until(lambda: "refused the display's token" in agent.log(), 60)
    finally:
        agent.stop()
    assert agent.log().count("refused the display's token") == 1
    assert "connected to hub" in agent.log()


def test_resubscribe_waits_grow_and_a_refused_token_waits_long(
    tmp_path: Path,
) -> None:
    """Failures back off up to five minutes; a refused token waits 7.5-15 min."""
    display = Display("ws://hub/ws/events", None, StatusBoard(tmp_path / "s", []))
    for failures in range(1, 20):
        assert 1.0 <= display._retry_delay_s(_Ended.FAILED, failures) <= 300.0
    for _ in range(100):
        assert 450.0 <= display._retry_delay_s(_Ended.REFUSED, 1) <= 900.0
