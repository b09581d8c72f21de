"""The Celery app of the analysis workers: ``celery -A workers.app worker``.

``farmeye worker`` starts its processes this way, with the settings in the
environment (:data:`workers.settings.SETTINGS_ENV`); started by hand, the app
reads the FarmEye config instead. How tasks stay safe:

- The pool is threads: a process holds ``3 x batch_size`` tasks, each in its
  own thread, blocked in :meth:`AnalysisEngine.analyse` while its batch runs.
- ``acks_late``: a task's message is acknowledged when the task returns, which
  is after its analysis is committed and announced. A process killed before
  that leaves the message unacknowledged in Redis, which hands it out again
  once ``visibility_timeout_s`` has passed (``reject_on_worker_lost`` covers
  the same case for the prefork pool, should anyone run it).
- The model loads in a worker bootstep, before the consumer starts: a missing
  or corrupt model stops the process at once, with the reason, and no task is
  taken.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery, Task, bootsteps
from celery.signals import worker_ready, worker_shutdown

from farmeye.labels import HEALTHY
from farmeye.models import ModelError, resolve
from farmeye.tasks import (
    ANALYSE_TASK,
    PRIORITY_ROUTINE,
    PRIORITY_SUSPICIOUS,
    celery_settings,
)
from workers import metrics
from workers.engine import AnalysisEngine, AnalysisJob, RetryLater
from workers.settings import (
    EXIT_START_FAILED,
    INDEX_ENV,
    PARENT_ENV,
    READY_FILE_ENV,
    WorkerSettings,
    settings_from_env,
)

logger = logging.getLogger(__name__)

PARENT_CHECK_INTERVAL_S = 1.0

_engine: AnalysisEngine | None = None


def load_worker_settings() -> WorkerSettings:
    """Settings from the supervisor, else from the FarmEye config."""
    settings = settings_from_env()
    if settings is not None:
        return settings
    from farmeye.config import load_settings, resolve_urls

    database_url, redis_url = resolve_urls(load_settings())
    return WorkerSettings(database_url=database_url, redis_url=redis_url)


def celery_config(settings: WorkerSettings) -> dict[str, Any]:
    """The shared task contract plus what only the consuming side sets."""
    config = celery_settings(settings.redis_url)
    transport = dict(config["broker_transport_options"])
    transport.update(
        visibility_timeout=settings.visibility_timeout_s,
        # Look for abandoned tasks often enough that a short visibility
        # timeout (tests, small farms) is honoured within seconds.
        unacked_restore_interval=max(
            1, min(10, int(settings.visibility_timeout_s / 4))
        ),
        unacked_restore_throttle=1,
    )
    config.update(
        broker_transport_options=transport,
        broker_connection_max_retries=None,
        worker_pool="threads",
        worker_concurrency=settings.threads,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_enable_remote_control=True,
    )
    return config


def running_engine() -> AnalysisEngine:
    if _engine is None:
        raise RuntimeError("the analysis engine is not started in this process")
    return _engine


def start_engine(settings: WorkerSettings) -> AnalysisEngine:
    """Load the model on its device, connect, and start the batchers."""
    global _engine
    from workers.announce import Announcer
    from workers.crashes import CrashCounter
    from workers.photos import PhotoSource
    from workers.runner import ModelRunner, cpu_threads_per_process
    from workers.store import AnalysisStore

    runner = ModelRunner(
        resolve(settings.model),
        device=settings.device,
        mixed_precision=settings.mixed_precision,
        device_index=int(os.environ.get(INDEX_ENV, "0")),
        cpu_threads=cpu_threads_per_process(settings.concurrency),
    )
    store = AnalysisStore(
        settings.database_url, retry_window_s=settings.database_retry_window_s
    )
    engine = AnalysisEngine(
        runner,
        store,
        Announcer(settings.redis_url),
        CrashCounter(settings.redis_url),
        settings,
        PhotoSource(settings.redis_url),
    )
    _engine = engine.start()
    metrics.MODEL.labels(runner.version, runner.device).set(1)
    return engine


class EngineStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Loads the model before the consumer takes its first task."""

    def start(self, parent: Any) -> None:
        from workers.runner import DeviceError

        settings = parent.app.farmeye_settings
        try:
            start_engine(settings)
        except (ModelError, DeviceError) as exc:
            logger.critical("cannot start the analysis worker: %s", exc)
            raise SystemExit(EXIT_START_FAILED) from None
        _watch_parent()


def _watch_parent() -> None:
    """Shut down warmly if the supervisor disappears (it was killed)."""
    raw = os.environ.get(PARENT_ENV)
    if not raw:
        return
    parent_pid = int(raw)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_INTERVAL_S)
        logger.warning("supervisor %s is gone; finishing current tasks", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="farmeye-parent-watch", daemon=True).start()


def _announce_ready(**_: Any) -> None:
    path = os.environ.get(READY_FILE_ENV)
    if not path or _engine is None:
        return
    info = {
        "pid": os.getpid(),
        "model_version": _engine.model_version,
        "device": getattr(_engine.runner, "device", "cpu"),
    }
    temporary = Path(f"{path}.tmp")
    temporary.write_text(json.dumps(info), encoding="utf-8")
    temporary.replace(path)


def _stop_engine(**_: Any) -> None:
    if _engine is not None:
        _engine.stop()


worker_ready.connect(_announce_ready)
worker_shutdown.connect(_stop_engine)


def analyse(
    self: Task,
    capture_id: int,
    image_b64: str | None = None,
    triage_label: str | None = None,
    published_at: float | None = None,
    image_key: str | None = None,
) -> str:
    """Run the full model on one capture; returns once the result is stored."""
    engine = running_engine()
    task_id = str(self.request.id)
    job = AnalysisJob(
        capture_id=int(capture_id),
        image_key=image_key,
        image_b64=image_b64,
        attempt=self.request.retries + 1,
        crashes=engine.crashes.start(task_id),
        priority=_priority(self.request.delivery_info, triage_label),
        published_at_s=published_at,
    )
    try:
        outcome = engine.analyse(job)
    except RetryLater as exc:
        metrics.RETRIES.labels(exc.reason).inc()
        raise self.retry(countdown=exc.delay_s, exc=exc, max_retries=None) from None
    finally:
        engine.crashes.finish(task_id)
    return outcome.status


def _priority(delivery_info: dict[str, Any] | None, triage_label: str | None) -> int:
    """The message's priority, or the one the hub would have given it."""
    priority = (delivery_info or {}).get("priority")
    if isinstance(priority, int):
        return priority
    suspicious = triage_label is not None and triage_label != HEALTHY
    return PRIORITY_SUSPICIOUS if suspicious else PRIORITY_ROUTINE


def create_app(settings: WorkerSettings) -> Celery:
    """The worker's Celery app, with the analysis task and the engine step."""
    celery = Celery("farmeye-worker")
    celery.conf.update(celery_config(settings))
    celery.farmeye_settings = settings
    celery.steps["worker"].add(EngineStep)
    celery.task(
        name=ANALYSE_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=None,
    )(analyse)
    return celery


app = create_app(load_worker_settings())
