"""The analysis of one task, from photo bytes to a stored, announced result.

Each Celery task thread calls :meth:`AnalysisEngine.analyse` and blocks until
its capture's analysis is committed and announced; only then does the task
return and Celery acknowledge it. In between, the photo passes two batchers:

1. ``inference``: up to ``batch_size`` photos per forward pass; Grad-CAM maps
   for the photos the model does not call healthy come out of the same pass.
2. ``storage``: the analyses finished together, each with its evidence map
   (a small PNG of the Grad-CAM grid; the hub paints it over the photo when
   asked), are committed in one transaction and announced in one Redis
   pipeline.

So the model is busy with the next batch while the previous one is
committed. Failures become :class:`RetryLater` (the task goes back to the
queue) or a stored ``failed`` analysis once a photo has used its attempts, or
at once when earlier deliveries of the task died with their worker process
(:mod:`workers.crashes`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from farmeye.heatmaps import encode_map
from farmeye.imaging import ImageError, preprocess
from workers import metrics
from workers.announce import Announcer
from workers.batching import Batcher
from workers.crashes import CrashCounter
from workers.photos import PhotoSource, PhotoUnavailable
from workers.runner import Inference
from workers.settings import WorkerSettings
from workers.store import (
    AnalysisRecord,
    AnalysisStore,
    StoredAnalysis,
    StoreUnavailable,
    UnknownCapture,
)

logger = logging.getLogger(__name__)

BATCH_HOLD_FACTOR = 4
"""While enough photos to fill a batch are being decoded, the batch waits up
to this many times ``batch_wait_ms`` for them."""

STORE_WAIT_S = 0.005
"""How long the storage batcher waits for the rest of a model batch."""

PHOTO_MISSING = "photo_missing"
"""Outcome of a task whose photo Redis no longer had: the hub sends it again."""

ResultT = TypeVar("ResultT")


class Runner(Protocol):
    """What the engine needs of :class:`workers.runner.ModelRunner`."""

    version: str
    input_size: int

    def run(self, pixels: np.ndarray) -> list[Inference]: ...


class RetryLater(Exception):
    """The task should go back to the queue and run again after ``delay_s``."""

    def __init__(self, reason: str, message: str, delay_s: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.delay_s = delay_s


@dataclass(frozen=True)
class AnalysisJob:
    """One ``farmeye.analyse`` task as the engine sees it."""

    capture_id: int
    image_key: str | None = None
    """Redis key of the photo (what the hub sends)."""
    image_b64: str | None = None
    """The photo itself, base64 (older hubs, tools)."""
    attempt: int = 1
    crashes: int = 0
    """Earlier deliveries whose worker process died during the analysis."""
    priority: int = 0
    published_at_s: float | None = None
    """Wall-clock time the hub sent the task (for the queue wait metric)."""


@dataclass(frozen=True)
class Outcome:
    """What became of a job: its stored analysis, or why there is none."""

    status: str
    analysis: StoredAnalysis | None = None


@dataclass(frozen=True)
class _Photo:
    pixels: np.ndarray
    published_at_s: float | None


@dataclass(frozen=True)
class _Verdict:
    inference: Inference
    batch_size: int


class AnalysisEngine:
    """Batches, runs, stores and announces analyses for many task threads."""

    def __init__(
        self,
        runner: Runner,
        store: AnalysisStore,
        announcer: Announcer,
        crashes: CrashCounter,
        settings: WorkerSettings,
        photos: PhotoSource,
    ) -> None:
        self.runner = runner
        self.store = store
        self.announcer = announcer
        self.crashes = crashes
        self.photos = photos
        self.settings = settings
        self._inference: Batcher[_Photo, _Verdict] = Batcher(
            self._infer_batch,
            max_batch=settings.effective_batch_size,
            max_wait_s=settings.effective_batch_wait_s,
            max_hold_s=settings.effective_batch_wait_s * BATCH_HOLD_FACTOR,
            name="farmeye-inference",
        )
        self._storage: Batcher[AnalysisRecord, StoredAnalysis] = Batcher(
            self._store_batch,
            max_batch=settings.threads,
            max_wait_s=STORE_WAIT_S,
            name="farmeye-storage",
        )

    @property
    def model_version(self) -> str:
        return self.runner.version

    def start(self) -> AnalysisEngine:
        self._inference.start()
        self._storage.start()
        return self

    def stop(self) -> None:
        """Finish what is queued, then release the database and Redis."""
        self._inference.stop()
        self._storage.stop()
        self.store.close()
        self.announcer.close()
        self.crashes.close()
        self.photos.close()

    def analyse(self, job: AnalysisJob) -> Outcome:
        """Analyse, store and announce one capture; raises :class:`RetryLater`.

        Once the outcome is settled, the photo the hub stashed for the task
        is deleted; while the task will run again, it stays.
        """
        outcome = self._analyse(job)
        if job.image_key is not None and outcome.status != PHOTO_MISSING:
            self.photos.discard(job.image_key)
        return outcome

    def _analyse(self, job: AnalysisJob) -> Outcome:
        deadline_s = time.monotonic() + self.settings.task_deadline_s
        if job.crashes >= self.settings.max_worker_crashes:
            message = (
                f"{job.crashes} worker processes died while analysing this photo;"
                " it is not tried again"
            )
            return self._failed(job, "crash", message, retry=False)
        data = self._photo(job)
        if data is None:
            return self._photo_missing(job)
        try:
            pixels = self._decode(data)
        except ImageError as exc:
            return self._failed(job, "image", f"photo cannot be analysed: {exc}")

        photo = _Photo(pixels, job.published_at_s)
        future = self._inference.submit(photo, job.priority, expected=True)
        try:
            verdict = self._wait(future, deadline_s, job)
        except RetryLater:
            raise
        except Exception as exc:
            return self._failed(job, "inference", f"the model failed: {exc}")
        return self._save(self._done(job, verdict), job, deadline_s)

    def _photo(self, job: AnalysisJob) -> bytes | str | None:
        """The job's photo (bytes, or base64 text), None if Redis lost it."""
        if job.image_b64 is not None:
            return job.image_b64
        if job.image_key is None:
            return None
        try:
            return self.photos.fetch(job.image_key)
        except PhotoUnavailable as exc:
            metrics.FAILURES.labels("redis").inc()
            raise RetryLater("redis", str(exc), self.settings.retry_delay_s) from exc

    def _photo_missing(self, job: AnalysisJob) -> Outcome:
        """No photo: done already (a redelivery), or back to the hub for it."""
        try:
            found = self.store.return_to_hub(job.capture_id)
        except StoreUnavailable as exc:
            metrics.FAILURES.labels("database").inc()
            raise RetryLater("database", str(exc), self.settings.retry_delay_s) from exc
        if found == "analysed":
            return Outcome("duplicate")
        if found == "unknown":
            metrics.FAILURES.labels("unknown_capture").inc()
            return Outcome("unknown_capture")
        metrics.FAILURES.labels("photo_missing").inc()
        logger.warning(
            "photo of capture %s is not in Redis (%s); the hub queues it again",
            job.capture_id,
            job.image_key,
        )
        return Outcome(PHOTO_MISSING)

    def _decode(self, data: bytes | str) -> np.ndarray:
        """The model input of a photo; the batcher knows it is coming."""
        self._inference.expect()
        try:
            if isinstance(data, str):
                data = decode_photo(data)
            return preprocess(data, self.runner.input_size)
        except BaseException:
            self._inference.withdraw()
            raise

    def _done(self, job: AnalysisJob, verdict: _Verdict) -> AnalysisRecord:
        """The analysis to store, with its evidence map (sick verdicts only)."""
        cam = verdict.inference.cam
        return AnalysisRecord(
            capture_id=job.capture_id,
            model_version=self.runner.version,
            status="done",
            label=verdict.inference.label,
            scores=verdict.inference.scores,
            attempts=job.attempt,
            heatmap_map=encode_map(cam) if cam is not None else None,
            batch_size=verdict.batch_size,
        )

    def _failed(
        self, job: AnalysisJob, reason: str, message: str, *, retry: bool = True
    ) -> Outcome:
        """Retry while attempts remain, then store the failure."""
        metrics.FAILURES.labels(reason).inc()
        if retry and job.attempt <= self.settings.max_image_retries:
            logger.info(
                "capture %s, attempt %d: %s; retrying",
                job.capture_id,
                job.attempt,
                message,
            )
            raise RetryLater(reason, message, self.settings.retry_delay_s)
        logger.warning(
            "capture %s failed after %d attempts: %s",
            job.capture_id,
            job.attempt,
            message,
        )
        record = AnalysisRecord(
            capture_id=job.capture_id,
            model_version=self.runner.version,
            status="failed",
            error=message,
            attempts=job.attempt,
        )
        deadline_s = time.monotonic() + self.settings.task_deadline_s
        return self._save(record, job, deadline_s)

    def _save(
        self, record: AnalysisRecord, job: AnalysisJob, deadline_s: float
    ) -> Outcome:
        future = self._storage.submit(record, job.priority)
        try:
            stored = self._wait(future, deadline_s, job)
        except UnknownCapture as exc:
            metrics.FAILURES.labels("unknown_capture").inc()
            logger.warning(
                "dropping the analysis of capture %s: %s", job.capture_id, exc
            )
            return Outcome("unknown_capture")
        except StoreUnavailable as exc:
            metrics.FAILURES.labels("database").inc()
            raise RetryLater("database", str(exc), self.settings.retry_delay_s) from exc
        return Outcome(stored.status, stored)

    def _wait(
        self, future: Future[ResultT], deadline_s: float, job: AnalysisJob
    ) -> ResultT:
        try:
            return future.result(timeout=max(0.0, deadline_s - time.monotonic()))
        except FutureTimeout:
            metrics.FAILURES.labels("timeout").inc()
            raise RetryLater(
                "timeout",
                f"capture {job.capture_id} was not analysed within "
                f"{self.settings.task_deadline_s:.0f} s",
                self.settings.retry_delay_s,
            ) from None

    def _infer_batch(self, photos: Sequence[_Photo]) -> list[_Verdict]:
        started_at_s = time.time()
        for photo in photos:
            if photo.published_at_s is not None:
                metrics.QUEUE_WAIT.observe(
                    max(0.0, started_at_s - photo.published_at_s)
                )
        metrics.BATCH_SIZE.observe(len(photos))

        started_s = time.monotonic()
        try:
            inferences = self.runner.run(np.stack([photo.pixels for photo in photos]))
        except Exception:
            logger.exception("the model failed on a batch of %d", len(photos))
            raise
        metrics.INFERENCE.observe(time.monotonic() - started_s)
        return [_Verdict(inference, len(photos)) for inference in inferences]

    def _store_batch(
        self, records: Sequence[AnalysisRecord]
    ) -> list[StoredAnalysis | UnknownCapture]:
        started_s = time.monotonic()
        try:
            results = self.store.save(records)
        except StoreUnavailable as exc:
            logger.warning("%d analyses wait for the database: %s", len(records), exc)
            raise
        except Exception:
            logger.exception("storing %d analyses failed", len(records))
            raise
        stored = {
            (item.capture_id, item.model_version): item
            for item in results
            if isinstance(item, StoredAnalysis)
        }
        self.announcer.announce(list(stored.values()))
        metrics.STORE.observe(time.monotonic() - started_s)
        for item in results:
            if isinstance(item, StoredAnalysis):
                metrics.ANALYSES.labels(item.status).inc()
        return results


def decode_photo(image_b64: str) -> bytes:
    """The photo bytes of a task, or :class:`ImageError` saying what is wrong."""
    try:
        return base64.b64decode(image_b64, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ImageError(f"image_b64 is not valid base64 ({exc})") from None
