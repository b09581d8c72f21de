"""Helpers for worker tests: photos, captures, tasks and worker processes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psycopg2
import redis
from celery import Celery
from PIL import Image

from farmeye import db
from farmeye.events import EVENTS_CHANNEL, decode_event
from farmeye.tasks import (
    ANALYSE_TASK,
    ANALYSIS_QUEUE,
    PRIORITY_ROUTINE,
    PRIORITY_SUSPICIOUS,
    analyse_arguments,
    celery_settings,
    photo_key,
    stash_photo,
)

WORKER_START_TIMEOUT_S = 240.0
"""TensorFlow import and model load on a busy two-core machine."""

T = TypeVar("T")


def synthetic_photo(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A JPEG of coloured blobs on a litter-brown floor, different per seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.empty((height, width, 3), np.float32)
    pixels[:] = rng.uniform(60, 160, 3)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(6):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(10, 60)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
        pixels += blob[..., None] * rng.uniform(-120, 120, 3)
    pixels += rng.normal(0, 12, pixels.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        out, format="JPEG", quality=90
    )
    return out.getvalue()


def wait_until(
    probe: Callable[[], T], *, timeout_s: float = 120.0, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy; that value."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline_s:
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}"
            )
        time.sleep(0.2)


class Farm:
    """A farm, coop and device in a test database, and captures in it."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        connection = db.connect(database_url)
        try:
            device = db.add_device(connection, "cam-1", "coop-1", "farm-1")
        finally:
            connection.close()
        self.device_id = device.device_id
        self.coop_id = device.coop_id
        self.farm_id = device.farm_id

    def add_captures(self, photos: Iterable[bytes]) -> list[int]:
        """Capture rows (state queued) for ``photos``, in order."""
        connection = db.connect(self.database_url)
        ids = []
        try:
            with connection, connection.cursor() as cursor:
                for data in photos:
                    cursor.execute(
                        "INSERT INTO captures (device_id, coop_id, farm_id, sha256,"
                        " size_bytes, content_type, captured_at, storage_key,"
                        " dispatch_state)"
                        " VALUES (%s, %s, %s, %s, %s, 'image/jpeg', now(), %s,"
                        " 'queued') RETURNING id",
                        (
                            self.device_id,
                            self.coop_id,
                            self.farm_id,
                            _unique_sha256(data),
                            len(data),
                            "test",
                        ),
                    )
                    row = cursor.fetchone()
                    assert row is not None
                    ids.append(int(row[0]))
        finally:
            connection.close()
        return ids


_sha_counter = iter(range(1, 10**9))


def _unique_sha256(data: bytes) -> str:
    """The same photo may be uploaded as several captures in a test."""
    return hashlib.sha256(data + str(next(_sha_counter)).encode()).hexdigest()


def query(database_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    connection = db.connect(database_url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())
    finally:
        connection.close()


def analyses(database_url: str, capture_ids: Sequence[int]) -> list[tuple[Any, ...]]:
    """(capture_id, status, label, error, attempts, batch_size, has heatmap,
    model_version) of the captures' analyses, by analysis id."""
    return query(
        database_url,
        "SELECT capture_id, status, label, error, attempts, batch_size,"
        " heatmap_map IS NOT NULL, model_version"
        " FROM analyses WHERE capture_id = ANY(%s) ORDER BY id",
        list(capture_ids),
    )


def all_analysed(database_url: str, capture_ids: Sequence[int]) -> bool:
    done = {row[0] for row in analyses(database_url, capture_ids)}
    return done >= set(capture_ids)


class TaskSender:
    """Sends ``farmeye.analyse`` tasks by name, as the hub does."""

    def __init__(self, redis_url: str) -> None:
        self.app = Celery("test-hub", set_as_current=False)
        self.app.conf.update(celery_settings(redis_url))
        self.redis = redis.Redis.from_url(redis_url)

    def send(
        self,
        capture_id: int,
        photo: bytes,
        *,
        suspicious: bool = False,
        image_b64: str | None = None,
        task_id: str | None = None,
        stash: bool = True,
    ) -> str:
        """Send one task; ``stash=False`` names a photo key that holds nothing."""
        label = "coccidiosis" if suspicious else "healthy"
        if image_b64 is not None:
            arguments = analyse_arguments(capture_id, label, image_b64=image_b64)
        else:
            key = photo_key(capture_id)
            if stash:
                stash_photo(self.redis, capture_id, photo)
            else:
                self.redis.delete(key)
            arguments = analyse_arguments(capture_id, label, image_key=key)
        result = self.app.send_task(
            ANALYSE_TASK,
            kwargs=arguments,
            priority=PRIORITY_SUSPICIOUS if suspicious else PRIORITY_ROUTINE,
            task_id=task_id,
        )
        return str(result.id)

    def close(self) -> None:
        self.app.close()
        self.redis.close()


def unacked_task_ids(redis_url: str) -> set[str]:
    """Ids of tasks a worker holds without having acknowledged them."""
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.hvals("unacked")
    finally:
        client.close()
    return {json.loads(entry)[0]["headers"]["id"] for entry in entries}


def queued_tasks(redis_url: str) -> int:
    """Tasks waiting in Redis for a worker, over every priority step."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [ANALYSIS_QUEUE] + [f"{ANALYSIS_QUEUE}:{step}" for step in range(1, 10)]
        return sum(int(client.llen(key)) for key in keys)
    finally:
        client.close()


def settled(redis_url: str, task_ids: Iterable[str]) -> bool:
    """Whether none of the tasks is queued or held unacknowledged any more."""
    return queued_tasks(redis_url) == 0 and not set(task_ids) & unacked_task_ids(
        redis_url
    )


def worker_waits_on_lock(database_url: str) -> bool:
    rows = query(
        database_url,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'farmeye-worker' AND wait_event_type = 'Lock'",
    )
    return bool(rows[0][0])


class TableLock:
    """Holds ``analyses`` locked against writes, so a batch blocks at commit."""

    def __init__(self, database_url: str) -> None:
        self.connection = db.connect(database_url)
        with self.connection.cursor() as cursor:
            cursor.execute("LOCK TABLE analyses IN SHARE MODE")

    def release(self) -> None:
        """Unlock; a connection the server already closed has nothing to undo."""
        if self.connection.closed:
            return
        try:
            self.connection.rollback()
        except psycopg2.Error:
            pass
        finally:
            self.connection.close()


class EventListener:
    """Collects ``analysis`` events from the events channel in a thread."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=True
        )
        self._pubsub.subscribe(EVENTS_CHANNEL)
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is not None:
                event = decode_event(message["data"])
                if event["type"] == "analysis":
                    self.events.append(event)

    def for_captures(self, capture_ids: Sequence[int]) -> list[dict[str, Any]]:
        wanted = set(capture_ids)
        return [event for event in list(self.events) if event["capture_id"] in wanted]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


class WorkerRun:
    """A ``farmeye worker`` process tree started for a test."""

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        log_path: Path,
        *options: str,
    ) -> None:
        env = dict(os.environ)
        env.update(
            FARMEYE_DATABASE_URL=database_url,
            FARMEYE_REDIS_URL=redis_url,
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        env.pop("FARMEYE_CONFIG", None)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "farmeye.cli", "-v", "worker", *options],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_for_line(
        self, prefix: str, timeout_s: float = WORKER_START_TIMEOUT_S
    ) -> str:
        """The next line of output starting with ``prefix``."""
        deadline_s = time.monotonic() + timeout_s
        while True:
            left_s = deadline_s - time.monotonic()
            if left_s <= 0 or self.process.poll() is not None and self.lines.empty():
                raise AssertionError(
                    f"worker printed no {prefix!r} line; log tail:\n{self.log_tail()}"
                )
            try:
                line = self.lines.get(timeout=min(left_s, 0.5))
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return line

    def wait_ready(self) -> WorkerRun:
        self.wait_for_line("ready:")
        return self

    def children(self) -> list[int]:
        """Pids of the Celery worker processes under the supervisor."""
        pid = self.process.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(part) for part in text.split()]

    def kill(self) -> None:
        """SIGKILL the supervisor and its workers at once, as a power cut would."""
        pids = [*self.children(), self.process.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(30)
        for pid in pids[:-1]:
            wait_until(partial(_dead, pid), timeout_s=30, what=f"process {pid} to end")

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM (warm shutdown) and the exit status."""
        children = self.children()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            code = -9
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._log.close()
        return code

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _dead(pid: int) -> bool:
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split()[2] != "Z"
    except OSError:
        return False
