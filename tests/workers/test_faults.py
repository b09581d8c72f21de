"""Faults around the workers: killed workers, restarted servers, bad models.

After each, every capture must have exactly one analysis: nothing lost,
nothing doubled. The servers are embedded ones of each test, with Redis
writing an append-only file, so they can be restarted under the worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from farmeye import db
from farmeye.models import SHIPPED_DIR
from tests.workers.support import (
    Farm,
    TableLock,
    TaskSender,
    WorkerRun,
    all_analysed,
    analyses,
    query,
    settled,
    synthetic_photo,
    unacked_task_ids,
    wait_until,
    worker_waits_on_lock,
)

FAULT_OPTIONS = (
    "--batch-size=4",
    "--batch-wait-ms=200",
    "--visibility-timeout-s=10",
    "--retry-delay-s=0.5",
)
"""A short visibility timeout, so tasks of a killed worker return quickly."""


class Scene:
    """Embedded servers, a farm, a task sender and the workers of one test."""

    def __init__(self, services: Any, tmp_path: Path) -> None:
        self.services = services
        self.tmp_path = tmp_path
        db.migrate(services.database_url)
        self.database_url = services.database_url
        self.redis_url = services.redis_url
        self.farm = Farm(self.database_url)
        self.sender = TaskSender(self.redis_url)
        self.workers: list[WorkerRun] = []

    def start_worker(self, *options: str) -> WorkerRun:
        log_path = self.tmp_path / f"worker-{len(self.workers)}.log"
        run = WorkerRun(self.database_url, self.redis_url, log_path, *options)
        self.workers.append(run)
        return run.wait_ready()

    def send(self, count: int, seed: int) -> tuple[list[int], list[str]]:
        photos = [synthetic_photo(seed + i) for i in range(count)]
        ids = self.farm.add_captures(photos)
        tasks = [self.sender.send(i, p) for i, p in zip(ids, photos, strict=True)]
        return ids, tasks

    def assert_each_analysed_once(self, ids: list[int], tasks: list[str]) -> None:
        wait_until(lambda: all_analysed(self.database_url, ids), what="analyses")
        wait_until(lambda: settled(self.redis_url, tasks), what="acknowledgements")
        rows = analyses(self.database_url, ids)
        assert sorted(row[0] for row in rows) == sorted(ids)
        assert {row[1] for row in rows} == {"done"}

    def close(self) -> None:
        for run in self.workers:
            run.stop()
        self.sender.close()


@pytest.fixture
def scene(
    embedded_services_factory: Callable[..., Any], tmp_path: Path
) -> Iterator[Scene]:
    scene = Scene(embedded_services_factory(appendonly=True), tmp_path)
    try:
        yield scene
    finally:
        scene.close()


def test_worker_killed_mid_batch_loses_nothing(scene: Scene):
    """SIGKILL while a batch commits: a new worker analyses each capture once."""
    lock = TableLock(scene.database_url)
    try:
        worker = scene.start_worker(*FAULT_OPTIONS)
        ids, tasks = scene.send(6, seed=1000)
        wait_until(lambda: worker_waits_on_lock(scene.database_url), what="commit")
        wait_until(
            lambda: set(tasks) <= unacked_task_ids(scene.redis_url),
            what="the worker to hold every task",
        )
        worker.kill()
    finally:
        lock.release()
    assert analyses(scene.database_url, ids) == []

    scene.start_worker(*FAULT_OPTIONS)
    scene.assert_each_analysed_once(ids, tasks)


def test_redis_restart_with_tasks_queued_loses_nothing(scene: Scene):
    """Redis restarts while tasks wait in it and in a worker: all analysed once."""
    scene.start_worker(*FAULT_OPTIONS)
    lock = TableLock(scene.database_url)
    try:
        ids, tasks = scene.send(16, seed=2000)
        wait_until(lambda: worker_waits_on_lock(scene.database_url), what="commit")
        scene.services.redis.restart()
    finally:
        lock.release()
    scene.assert_each_analysed_once(ids, tasks)


def test_postgres_restart_during_commit_stores_once(scene: Scene):
    """PostgreSQL restarts under a batch's commit: retried, stored exactly once."""
    scene.start_worker(*FAULT_OPTIONS)
    lock = TableLock(scene.database_url)
    try:
        ids, tasks = scene.send(4, seed=3000)
        wait_until(lambda: worker_waits_on_lock(scene.database_url), what="commit")
        scene.services.postgres.restart()
    finally:
        lock.release()
    scene.assert_each_analysed_once(ids, tasks)
    states = query(
        scene.database_url,
        "SELECT DISTINCT dispatch_state FROM captures WHERE id = ANY(%s)",
        ids,
    )
    assert states == [("done",)]


def copy_model(folder: Path) -> Path:
    """The shipped card and full model in ``folder``; the model file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    card = json.loads((SHIPPED_DIR / "card.json").read_text())
    shutil.copy(SHIPPED_DIR / card["models"]["full"]["file"], folder / "full.keras")
    card["models"] = {"full": card["models"]["full"] | {"file": "full.keras"}}
    (folder / "card.json").write_text(json.dumps(card))
    return folder / "full.keras"


def set_card_version(model_path: Path, version: str) -> None:
    card_path = model_path.parent / "card.json"
    card = json.loads(card_path.read_text())
    card["version"] = version
    card_path.write_text(json.dumps(card))


def test_sighup_brings_in_a_new_model_without_losing_tasks(
    db_url: str, redis_db_url: str, tmp_path: Path
):
    """Tasks keep flowing through a reload; later ones carry the new version."""
    model_path = copy_model(tmp_path / "model")
    set_card_version(model_path, "before-reload")
    farm, sender = Farm(db_url), TaskSender(redis_db_url)
    worker = WorkerRun(
        db_url,
        redis_db_url,
        tmp_path / "worker.log",
        f"--model={model_path}",
        *FAULT_OPTIONS,
    ).wait_ready()
    ids: list[int] = []
    tasks: list[str] = []

    def send_one() -> list[tuple[Any, ...]]:
        photo = synthetic_photo(4000 + len(ids))
        (capture_id,) = farm.add_captures([photo])
        ids.append(capture_id)
        tasks.append(sender.send(capture_id, photo))
        return [row for row in analyses(db_url, ids) if row[7] == "after-reload/full"]

    try:
        send_one()
        set_card_version(model_path, "after-reload")
        worker.process.send_signal(signal.SIGHUP)
        wait_until(send_one, timeout_s=240, what="an analysis by the new model")
        assert "after-reload/full" in worker.wait_for_line("reloaded:")
        last, _ = ids[-1], send_one()
        wait_until(lambda: all_analysed(db_url, ids), what="every capture")
        wait_until(lambda: settled(redis_db_url, tasks), what="acknowledgements")
        rows = analyses(db_url, ids)
        assert sorted(row[0] for row in rows) == sorted(ids)
        assert {row[7] for row in rows} <= {"before-reload/full", "after-reload/full"}
        assert rows[0][7] == "before-reload/full"
        assert {row[7] for row in rows if row[0] >= last} == {"after-reload/full"}
        assert len(worker.children()) == 1
    finally:
        worker.stop()
        sender.close()


def run_worker_command(model: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        FARMEYE_DATABASE_URL="postgresql://nobody@127.0.0.1:9/none",
        FARMEYE_REDIS_URL="redis://127.0.0.1:9/0",
    )
    return subprocess.run(
        [sys.executable, "-m", "farmeye.cli", "worker", f"--model={model}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_missing_model_file_is_a_clear_error_at_start(tmp_path: Path):
    """A card whose model file is gone stops the command before any process."""
    model_path = copy_model(tmp_path)
    model_path.unlink()
    result = run_worker_command(model_path)
    assert result.returncode != 0
    assert f"model file {model_path} is missing" in result.stderr


def test_corrupt_model_file_is_a_clear_error_at_start(tmp_path: Path):
    """A model file that is not a Keras archive is refused at once."""
    model_path = copy_model(tmp_path)
    model_path.write_bytes(b"\x00garbage" * 1000)
    result = run_worker_command(model_path)
    assert result.returncode != 0
    assert "is corrupt" in result.stderr


def test_unloadable_model_stops_the_worker_at_start(tmp_path: Path):
    """A well-formed archive Keras cannot load fails at start, not per task."""
    model_path = copy_model(tmp_path)
    with zipfile.ZipFile(model_path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"not hdf5")
    result = run_worker_command(model_path)
    assert result.returncode != 0
    assert "cannot be loaded" in result.stderr
    assert "before it was ready" in result.stderr
    assert "ready:" not in result.stdout
