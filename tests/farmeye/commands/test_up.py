"""``farmeye up``: the whole system from one command, as a newcomer runs it.

One ``farmeye up --demo`` runs for the module (starting PostgreSQL, Redis and
a TensorFlow worker takes most of a minute); the later tests kill it, start
a second one on the same folder, and stop that one with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from websockets.asyncio.client import connect

from farmeye.cli import main
from tests.hub.support import photo

UP_LINE = re.compile(r"^farmeye up: ingest (\S+:\d+) http (http://\S+)$")
TOKEN_LINE = re.compile(r"^demo: user token (\S+)$")
START_TIMEOUT_S = 400.0
VERDICT_TIMEOUT_S = 300.0


class UpProcess:
    """`farmeye up` in a child process, its output lines collected."""

    def __init__(self, data_dir: Path, demo: bool) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("FARMEYE_DATABASE_URL", "FARMEYE_REDIS_URL")
        }
        env.update(
            FARMEYE_INGEST_PORT="0", FARMEYE_HTTP_PORT="0", FARMEYE_TRIAGE_PROCESSES="1"
        )
        command = [
            sys.executable,
            "-m",
            "farmeye.cli",
            "up",
            "--data-dir",
            str(data_dir),
        ]
        self.data_dir = data_dir
        self.lines: queue.Queue[str] = queue.Queue()
        with (data_dir.parent / f"{data_dir.name}-up.log").open("ab") as log:
            self.process = subprocess.Popen(
                command + (["--demo"] if demo else []),
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: re.Pattern[str]) -> re.Match[str]:
        """The next output line; it must match ``pattern``."""
        try:
            line = self.lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"`farmeye up` printed nothing in {START_TIMEOUT_S} s")
        match = pattern.match(line)
        assert match, f"unexpected output line {line!r}"
        return match

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 180.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout_s)


@dataclass
class Session:
    data_dir: Path
    up: UpProcess
    ingest: str
    http: str
    demo_token: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "FARMEYE_DATA_DIR": str(self.data_dir),
            "FARMEYE_DATABASE_URL": "",
            "FARMEYE_REDIS_URL": "",
        }


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """A `farmeye up --demo` for this module, stopped at the end whatever happens."""
    data_dir = tmp_path_factory.mktemp("up") / "farmeye"
    up = UpProcess(data_dir, demo=True)
    current = Session(data_dir, up, "", "", "")
    try:
        line = up.expect(UP_LINE)
        current.ingest, current.http = line.group(1), line.group(2)
        up.expect(re.compile(r"^demo: dashboard "))
        current.demo_token = up.expect(TOKEN_LINE).group(1)
        yield current
    finally:
        if current.up.process.poll() is None:
            current.up.stop(signal.SIGKILL)


async def verdict_events(http: str, token: str, capture_id: int | None = None) -> dict:
    """The first triage and analysis events (of one capture, if given)."""
    url = http.replace("http://", "ws://") + f"/ws/events?token={token}"
    found: dict = {}
    async with asyncio.timeout(VERDICT_TIMEOUT_S), connect(url) as stream:
        while not {"triage", "analysis"} <= set(found):
            event = json.loads(await stream.recv())
            if capture_id in (None, event["capture_id"]):
                found.setdefault(event["type"], event)
    return found


def test_up_demo_prints_addresses_and_verdicts_flow(session: Session) -> None:
    """The first line names both addresses; demo photos get triage and analysis."""
    info = json.loads((session.data_dir / "run.json").read_text())
    assert (info["ingest"], info["http"]) == (session.ingest, session.http)

    events = asyncio.run(verdict_events(session.http, session.demo_token))

    assert events["triage"]["label"] in (
        "healthy",
        "coccidiosis",
        "salmonella",
        "newcastle",
    )
    assert events["analysis"]["model_version"].endswith("/full")


def test_upload_wait_json_uses_the_local_up(session: Session, tmp_path: Path) -> None:
    """With only the data dir known, upload --wait --json gets both verdicts."""
    runner = CliRunner()
    added = runner.invoke(
        main,
        ["devices", "add", "bench-camera", "--coop", "lab", "--farm", "demo", "--json"],
        env=session.env,
    )
    assert added.exit_code == 0, added.output
    device = json.loads(added.output)
    image = tmp_path / "dropping.jpg"
    image.write_bytes(photo(42, (1280, 960)))

    result = runner.invoke(
        main,
        [
            "upload",
            str(image),
            "--device",
            device["device_id"],
            "--secret",
            device["secret"],
            "--wait",
            "--json",
        ],
        env=session.env,
    )

    assert result.exit_code == 0, result.output
    line = json.loads(result.output)
    assert set(line) >= {"file", "capture_id", "triage", "analysis", "latency_ms"}
    assert line["triage"]["label"] and line["analysis"]["label"]
    assert set(line["analysis"]["scores"]) == {
        "healthy",
        "coccidiosis",
        "salmonella",
        "newcastle",
    }


def test_history_reads_the_local_up(session: Session) -> None:
    """history finds the database of the running up through its data dir."""
    result = CliRunner().invoke(
        main, ["history", "--json", "--limit", "2"], env=session.env
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 2 and all(row["triage"] for row in rows)


def test_second_up_after_sigkill_recovers(session: Session) -> None:
    """After a SIGKILL, a new up on the same folder starts and keeps the history."""
    session.up.stop(signal.SIGKILL)
    session.up = UpProcess(session.data_dir, demo=False)

    line = session.up.expect(UP_LINE)

    session.http = line.group(2)
    result = CliRunner().invoke(
        main, ["history", "--json", "--limit", "1"], env=session.env
    )
    assert result.exit_code == 0 and json.loads(result.output)["id"] >= 1


def test_sigterm_stops_everything_cleanly(session: Session) -> None:
    """SIGTERM ends up with status 0, removes run.json and stops both servers."""
    postmaster = session.data_dir / "postgres" / "data" / "postmaster.pid"
    redis_pid = session.data_dir / "redis" / "valkey.pid"
    server_pids = [int(path.read_text().split()[0]) for path in (postmaster, redis_pid)]

    assert session.up.stop(signal.SIGTERM) == 0

    assert not (session.data_dir / "run.json").exists()
    assert not postmaster.exists()
    for pid in server_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
