"""``farmeye worker``: start, watch, replace and stop the worker processes.

The supervisor never imports TensorFlow. It checks the model file, starts
``concurrency`` Celery worker processes (``celery -A workers.app worker``,
each on its own GPU when there are several), waits until each has loaded the
model, then:

- restarts a process that dies (at most :data:`RESTART_LIMIT` times in
  :data:`RESTART_WINDOW_S`; the tasks it held come back through Redis);
- on SIGHUP replaces the processes one by one: the new one loads the model
  now installed and starts taking tasks before the old one finishes its batch
  and exits, so a new model version goes live without a pause or a lost task;
- on SIGTERM or SIGINT asks every process for a warm shutdown (finish the
  current batch, store, acknowledge) and waits for it;
- serves the metrics of all processes on ``metrics_port``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from farmeye.models import ModelError, ModelSpec, resolve
from farmeye.tasks import ANALYSIS_QUEUE
from workers import metrics
from workers.settings import (
    INDEX_ENV,
    PARENT_ENV,
    READY_FILE_ENV,
    SETTINGS_ENV,
    WorkerSettings,
)

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0
"""Longest a process may take to load its model and connect."""

STOP_TIMEOUT_S = 300.0
"""Longest a warm shutdown may take before the process is killed (its
unacknowledged tasks then come back through Redis)."""

RESTART_LIMIT = 5
RESTART_WINDOW_S = 300.0
"""More than RESTART_LIMIT deaths within RESTART_WINDOW_S stop the supervisor."""

POLL_INTERVAL_S = 0.2

KERAS_MEMBERS = ("config.json", "model.weights.h5")
"""What every ``.keras`` file holds; checked before any process starts."""


class SupervisorError(RuntimeError):
    """The workers could not be started or kept running; the message says why."""


def check_model(model: str) -> ModelSpec:
    """Find the model and check its file looks sound, without TensorFlow."""
    spec = resolve(model)
    if spec.path.suffix == ".keras":
        try:
            with zipfile.ZipFile(spec.path) as archive:
                missing = [m for m in KERAS_MEMBERS if m not in archive.namelist()]
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelError(
                f"model file {spec.path} is corrupt ({exc}); reinstall FarmEye "
                "or copy the model again"
            ) from None
        if missing:
            raise ModelError(
                f"model file {spec.path} lacks {', '.join(missing)}; it is not a "
                "Keras model saved by `farmeye train`"
            )
    return spec


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    ready_file: Path
    info: dict[str, Any] = field(default_factory=dict)


class Supervisor:
    """Runs the worker processes of one machine until told to stop."""

    def __init__(self, settings: WorkerSettings, *, announce: Any = None) -> None:
        self.settings = settings
        self._announce = announce or (lambda line: logger.warning("%s", line))
        self._run_dir = Path(tempfile.mkdtemp(prefix="farmeye-worker-"))
        self._children: list[_Child] = []
        self._deaths: deque[float] = deque()
        self._stop_requested = False
        self._reload_requested = False
        self._metrics_dir: Path | None = None
        self._spawned = 0

    def run(self) -> int:
        """Start everything, supervise until a stop signal; the exit status."""
        check_model(self.settings.model)
        self._install_signal_handlers()
        self._start_metrics()
        try:
            for index in range(self.settings.concurrency):
                self._children.append(self._start_ready(index))
            self._announce_ready("ready")
            self._supervise()
        except SupervisorError:
            if not self._stop_requested:
                raise
        finally:
            self._stop_all()
            self._cleanup()
        return 0

    def _supervise(self) -> None:
        while not self._stop_requested:
            if self._reload_requested:
                self._reload_requested = False
                self._reload()
            for position, child in enumerate(self._children):
                code = child.process.poll()
                if code is not None and not self._stop_requested:
                    self._children[position] = self._replace_dead(child, code)
            time.sleep(POLL_INTERVAL_S)

    def _replace_dead(self, child: _Child, code: int) -> _Child:
        now_s = time.monotonic()
        self._deaths.append(now_s)
        while self._deaths and now_s - self._deaths[0] > RESTART_WINDOW_S:
            self._deaths.popleft()
        metrics.process_exited(child.process.pid)
        if len(self._deaths) > RESTART_LIMIT:
            raise SupervisorError(
                f"worker processes died {len(self._deaths)} times in "
                f"{RESTART_WINDOW_S:.0f} s (last exit status {code}); giving up"
            )
        logger.warning(
            "worker process %d (pid %s) exited with status %s; restarting it",
            child.index,
            child.process.pid,
            code,
        )
        return self._start_ready(child.index)

    def _reload(self) -> None:
        """Replace each process by one running the model installed now."""
        try:
            check_model(self.settings.model)
        except ModelError as exc:
            logger.warning("not reloading: %s", exc)
            return
        for position, old in enumerate(list(self._children)):
            try:
                new = self._start_ready(old.index)
            except SupervisorError as exc:
                logger.warning("reload stopped, old processes keep running: %s", exc)
                return
            self._children[position] = new
            self._stop_child(old)
        self._announce_ready("reloaded")

    def _start_ready(self, index: int) -> _Child:
        child = self._spawn(index)
        deadline_s = time.monotonic() + START_TIMEOUT_S
        while not child.ready_file.exists():
            code = child.process.poll()
            if code is not None:
                raise SupervisorError(
                    f"worker process {index} exited with status {code} before it "
                    "was ready; its error is above"
                )
            if time.monotonic() > deadline_s or self._stop_requested:
                self._stop_child(child)
                raise SupervisorError(
                    f"worker process {index} was not ready within "
                    f"{START_TIMEOUT_S:.0f} s"
                )
            time.sleep(POLL_INTERVAL_S)
        child.info = json.loads(child.ready_file.read_text(encoding="utf-8"))
        logger.info(
            "worker process %d ready (pid %s, model %s)",
            index,
            child.process.pid,
            child.info.get("model_version"),
        )
        return child

    def _spawn(self, index: int) -> _Child:
        self._spawned += 1
        ready_file = self._run_dir / f"ready-{index}-{self._spawned}.json"
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and args
            self._command(index),
            env=self._environment(index, ready_file),
            start_new_session=True,
        )
        return _Child(index, process, ready_file)

    def _command(self, index: int) -> list[str]:
        level = self.settings.log_level.upper()
        quiet = [] if level in ("DEBUG", "INFO") else ["--quiet"]
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
            *quiet,
            "worker",
            f"--loglevel={level}",
            f"--hostname=farmeye-{os.getpid()}-{index}-{self._spawned}@%h",
            f"--queues={ANALYSIS_QUEUE}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]

    def _environment(self, index: int, ready_file: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                SETTINGS_ENV: self.settings.to_env(),
                INDEX_ENV: str(index),
                PARENT_ENV: str(os.getpid()),
                READY_FILE_ENV: str(ready_file),
                "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            }
        )
        if self.settings.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        return env

    def _announce_ready(self, what: str) -> None:
        versions = sorted({str(c.info.get("model_version")) for c in self._children})
        self._announce(
            f"{what}: {len(self._children)} worker process(es), model "
            f"{', '.join(versions)}, device {self.settings.device}, batch "
            f"{self.settings.effective_batch_size} / "
            f"{self.settings.effective_batch_wait_s * 1000:.0f} ms"
        )

    def _stop_child(self, child: _Child) -> None:
        process = child.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "worker process %d (pid %s) did not stop in %.0f s; killing it",
                    child.index,
                    process.pid,
                    STOP_TIMEOUT_S,
                )
                process.kill()
                process.wait()
        metrics.process_exited(process.pid)
        child.ready_file.unlink(missing_ok=True)

    def _stop_all(self) -> None:
        for child in self._children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in self._children:
            self._stop_child(child)
        self._children.clear()

    def _start_metrics(self) -> None:
        if self.settings.metrics_port is None:
            return
        self._metrics_dir = metrics.prepare_multiprocess_dir()
        metrics.serve(self.settings.metrics_port)

    def _cleanup(self) -> None:
        for path in self._run_dir.glob("*"):
            path.unlink(missing_ok=True)
        self._run_dir.rmdir()
        if self._metrics_dir is not None:
            metrics.remove_multiprocess_dir(self._metrics_dir)

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received; stopping worker processes", signal.strsignal(signum))
        self._stop_requested = True

    def _on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload_requested = True
