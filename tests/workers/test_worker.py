"""One real ``farmeye worker`` on real Redis, PostgreSQL and Celery.

The worker starts once for the module, after 20 tasks were queued for it, so
the first tests see it take a full prefetch at once.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from farmeye.embedded import free_port
from farmeye.heatmaps import decode_map
from farmeye.labels import HEALTHY
from farmeye.tasks import photo_key
from tests.workers.support import (
    EventListener,
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
from workers.crashes import KEY_PREFIX

BATCH_SIZE = 4
ROUTINE_QUEUED = 16
SUSPICIOUS_QUEUED = 4


class Cluster:
    """The module's worker, its farm, and the captures queued before it ran."""

    def __init__(self, database_url: str, redis_url: str, log_path: Path) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.farm = Farm(database_url)
        self.sender = TaskSender(redis_url)
        self.events = EventListener(redis_url)
        self.metrics_port = free_port()
        self.routine = self._queue(ROUTINE_QUEUED, seed=100, suspicious=False)
        self.suspicious = self._queue(SUSPICIOUS_QUEUED, seed=200, suspicious=True)
        self.worker = WorkerRun(
            database_url,
            redis_url,
            log_path,
            f"--batch-size={BATCH_SIZE}",
            "--batch-wait-ms=1000",
            "--max-image-retries=1",
            "--retry-delay-s=0.5",
            "--visibility-timeout-s=60",
            f"--metrics-port={self.metrics_port}",
        ).wait_ready()

    def _queue(self, count: int, *, seed: int, suspicious: bool) -> list[int]:
        photos = [synthetic_photo(seed + i) for i in range(count)]
        ids = self.farm.add_captures(photos)
        for capture_id, photo in zip(ids, photos, strict=True):
            self.sender.send(capture_id, photo, suspicious=suspicious)
        return ids

    def analyse(self, photos: list[bytes]) -> list[int]:
        ids = self.farm.add_captures(photos)
        for capture_id, photo in zip(ids, photos, strict=True):
            self.sender.send(capture_id, photo)
        return ids

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
            return str(response.read().decode())

    def close(self) -> None:
        self.worker.stop()
        self.events.close()
        self.sender.close()


@pytest.fixture(scope="module")
def cluster(
    module_db_url: str, module_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    cluster = Cluster(module_db_url, module_redis_url, log_path)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def queued_analyses(cluster: Cluster) -> list[tuple[Any, ...]]:
    captures = cluster.routine + cluster.suspicious
    wait_until(
        lambda: all_analysed(cluster.database_url, captures),
        what="the queued captures to be analysed",
    )
    return analyses(cluster.database_url, captures)


def test_queued_tasks_are_analysed_in_full_batches(
    queued_analyses: list[tuple[Any, ...]],
):
    """Tasks waiting in the queue go through the model BATCH_SIZE at a time."""
    assert len(queued_analyses) == ROUTINE_QUEUED + SUSPICIOUS_QUEUED
    batch_sizes = [row[5] for row in queued_analyses]
    assert max(batch_sizes) == BATCH_SIZE
    assert batch_sizes.count(BATCH_SIZE) >= BATCH_SIZE
    assert {row[1] for row in queued_analyses} == {"done"}


def test_suspicious_captures_are_analysed_first(
    cluster: Cluster, queued_analyses: list[tuple[Any, ...]]
):
    """Captures queued last but suspicious are among the first analysed."""
    order = [row[0] for row in queued_analyses]
    first_prefetch = set(order[: 3 * BATCH_SIZE])
    assert set(cluster.suspicious) <= first_prefetch


def test_every_capture_is_settled_and_announced(
    cluster: Cluster, queued_analyses: list[tuple[Any, ...]]
):
    """Each analysis moves its capture to done and is announced with its ids."""
    captures = cluster.routine + cluster.suspicious
    states = query(
        cluster.database_url,
        "SELECT DISTINCT dispatch_state FROM captures WHERE id = ANY(%s)",
        captures,
    )
    assert states == [("done",)]
    wait_until(
        lambda: len(cluster.events.for_captures(captures)) >= len(captures),
        what="analysis events",
    )
    events = cluster.events.for_captures(captures)
    stored = {row[0]: row for row in queued_analyses}
    for event in events:
        row = stored[event["capture_id"]]
        assert (event["farm_id"], event["coop_id"], event["device_id"]) == (
            cluster.farm.farm_id,
            cluster.farm.coop_id,
            cluster.farm.device_id,
        )
        assert event["label"] == row[2]
        assert event["model_version"] == row[7]
        assert set(event["scores"]) == {
            "healthy",
            "coccidiosis",
            "salmonella",
            "newcastle",
        }
        assert event["status"] == "done"
        assert event["heatmap"] is row[6]


def test_sick_verdicts_store_an_evidence_map(
    cluster: Cluster, sick_photos: list[bytes]
):
    """Every analysis that is not healthy stores its Grad-CAM grid; healthy none."""
    photos = sick_photos or [synthetic_photo(300 + i) for i in range(6)]
    captures = cluster.analyse(photos)
    wait_until(lambda: all_analysed(cluster.database_url, captures), what="analyses")
    rows = query(
        cluster.database_url,
        "SELECT label, heatmap_map, heatmap_png FROM analyses"
        " WHERE capture_id = ANY(%s)",
        captures,
    )
    sick = [evidence for label, evidence, _ in rows if label != HEALTHY]
    if not sick:
        pytest.skip("the shipped model called every test photo healthy")
    for label, evidence, painted in rows:
        assert (evidence is not None) == (label != HEALTHY)
        assert painted is None
    grid = decode_map(bytes(sick[0]))
    assert grid.shape == (7, 7)
    assert 0.0 <= grid.min() <= grid.max() <= 1.0
    assert grid.max() in (0.0, 1.0)


def test_task_is_acknowledged_only_after_commit(cluster: Cluster):
    """While the analysis cannot commit, its task stays unacknowledged in Redis."""
    photo = synthetic_photo(400)
    (capture_id,) = cluster.farm.add_captures([photo])
    lock = TableLock(cluster.database_url)
    try:
        task_id = cluster.sender.send(capture_id, photo)
        wait_until(
            lambda: worker_waits_on_lock(cluster.database_url),
            what="the worker to block on its commit",
        )
        assert task_id in unacked_task_ids(cluster.redis_url)
        assert analyses(cluster.database_url, [capture_id]) == []
    finally:
        lock.release()
    wait_until(
        lambda: task_id not in unacked_task_ids(cluster.redis_url),
        what="the acknowledgement",
    )
    assert len(analyses(cluster.database_url, [capture_id])) == 1


def test_duplicate_task_leaves_one_analysis(cluster: Cluster):
    """The same capture sent three times is analysed and stored once."""
    photo = synthetic_photo(500)
    (capture_id,) = cluster.farm.add_captures([photo])
    task_ids = [cluster.sender.send(capture_id, photo) for _ in range(2)]
    wait_until(lambda: all_analysed(cluster.database_url, [capture_id]), what="it")
    task_ids.append(cluster.sender.send(capture_id, photo))
    wait_until(lambda: settled(cluster.redis_url, task_ids), what="all three to finish")
    assert len(analyses(cluster.database_url, [capture_id])) == 1
    assert cluster.events.for_captures([capture_id])


def test_photo_leaves_redis_once_its_analysis_is_stored(cluster: Cluster):
    """The photo the hub stashed beside the task is deleted after the commit."""
    photo = synthetic_photo(520)
    (capture_id,) = cluster.farm.add_captures([photo])
    task_id = cluster.sender.send(capture_id, photo)
    stash = redis.Redis.from_url(cluster.redis_url)
    try:
        assert stash.exists(photo_key(capture_id))
        wait_until(lambda: settled(cluster.redis_url, [task_id]), what="the task")
        assert len(analyses(cluster.database_url, [capture_id])) == 1
        assert not stash.exists(photo_key(capture_id))
    finally:
        stash.close()


def test_task_whose_photo_is_gone_hands_the_capture_back(cluster: Cluster):
    """No photo in Redis: the capture goes back to pending for the hub to resend
    at once (any claim a re-sending hub held on it is lifted), unless it is
    analysed already (a redelivery), which stays as it is."""
    photo = synthetic_photo(540)
    lost, analysed = cluster.farm.add_captures([photo, photo])
    claim = "UPDATE captures SET dispatch_claimed_until = now() + interval '1 h'"
    query(cluster.database_url, claim + " WHERE id = %s RETURNING id", lost)
    first = cluster.sender.send(analysed, photo)
    wait_until(lambda: settled(cluster.redis_url, [first]), what="the first task")

    task_ids = [
        cluster.sender.send(lost, photo, stash=False),
        cluster.sender.send(analysed, photo, stash=False),
    ]
    wait_until(lambda: settled(cluster.redis_url, task_ids), what="both tasks")

    states = dict(
        query(
            cluster.database_url,
            "SELECT id, dispatch_state FROM captures WHERE id = ANY(%s)",
            [lost, analysed],
        )
    )
    assert states == {lost: "pending", analysed: "done"}
    claimed = query(
        cluster.database_url,
        "SELECT dispatch_claimed_until FROM captures WHERE id = %s",
        lost,
    )
    assert claimed == [(None,)]
    assert analyses(cluster.database_url, [lost]) == []
    assert len(analyses(cluster.database_url, [analysed])) == 1


def test_poison_photos_are_retried_then_recorded_failed(cluster: Cluster):
    """Undecodable payloads are retried, then stored failed; good ones pass."""
    good = synthetic_photo(600)
    truncated = good[: len(good) // 3]
    not_an_image = b"%PDF-1.4 certainly not a photo" * 20
    ids = cluster.farm.add_captures([good, truncated, not_an_image, b"x" * 64])
    for capture_id, payload in zip(
        ids[:3], [good, truncated, not_an_image], strict=True
    ):
        cluster.sender.send(capture_id, payload)
    cluster.sender.send(ids[3], b"", image_b64="@@ not base64 @@")

    wait_until(lambda: all_analysed(cluster.database_url, ids), what="all four")
    rows = {row[0]: row for row in analyses(cluster.database_url, ids)}
    assert rows[ids[0]][1] == "done"
    for capture_id, reason in zip(
        ids[1:],
        ["truncated or corrupt", "not an image", "not valid base64"],
        strict=True,
    ):
        _, status, label, error, attempts, *_ = rows[capture_id]
        assert (status, label, attempts) == ("failed", None, 2)
        assert reason in error
    states = dict(
        query(
            cluster.database_url,
            "SELECT id, dispatch_state FROM captures WHERE id = ANY(%s)",
            ids,
        )
    )
    assert [states[i] for i in ids] == ["done", "failed", "failed", "failed"]
    failed_events = wait_until(
        lambda: [
            e for e in cluster.events.for_captures(ids[1:]) if e["status"] == "failed"
        ],
        what="failure events",
    )
    assert all(event["error"] for event in failed_events)


def test_metrics_show_batches_waits_and_failures(cluster: Cluster):
    """Metrics show batch sizes, queue waits, inference time and failures."""
    text = cluster.metrics()
    count = re.search(r"^farmeye_worker_batch_size_count (\S+)$", text, re.M)
    assert count is not None and float(count.group(1)) > 0
    assert re.search(r"^farmeye_worker_queue_wait_seconds_count [1-9]", text, re.M)
    assert re.search(r"^farmeye_worker_inference_seconds_sum \S+", text, re.M)
    image_failures = re.search(
        r'^farmeye_worker_failures_total\{reason="image"\} (\S+)$', text, re.M
    )
    assert image_failures is not None and float(image_failures.group(1)) >= 6
    failed = re.search(
        r'^farmeye_worker_analyses_total\{status="failed"\} (\S+)$', text, re.M
    )
    assert failed is not None and float(failed.group(1)) >= 3


def test_photo_that_kept_killing_workers_is_recorded_failed(cluster: Cluster):
    """A task whose earlier deliveries died with their process is not run again."""
    photo = synthetic_photo(700)
    (capture_id,) = cluster.farm.add_captures([photo])
    task_id = f"crash-{capture_id}"
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        client.set(KEY_PREFIX + task_id, 3)
        cluster.sender.send(capture_id, photo, task_id=task_id)
        wait_until(lambda: all_analysed(cluster.database_url, [capture_id]), what="it")
        wait_until(lambda: not client.exists(KEY_PREFIX + task_id), what="the mark")
    finally:
        client.close()
    ((_, status, _, error, *_),) = analyses(cluster.database_url, [capture_id])
    assert status == "failed"
    assert "3 worker processes died" in error
