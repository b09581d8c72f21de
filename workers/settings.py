"""What one analysis worker needs to know, validated once at start.

The ``farmeye worker`` command builds :class:`WorkerSettings` from its options
and the FarmEye config, and hands them to each Celery worker process it starts
through the :data:`SETTINGS_ENV` variable, so a process started by hand with
``celery -A workers.app worker`` reads the very same settings.
"""

from __future__ import annotations

import os
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, model_validator

from farmeye.tasks import VISIBILITY_TIMEOUT_S

REDIS_TIMEOUT_S = 5.0
"""Seconds a worker's call to Redis may take before Redis counts as down."""


def redis_client(url: str) -> redis.Redis:
    """A Redis client with its own connection pool and the workers' timeouts."""
    return redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )


Device = Literal["cpu", "gpu"]

SETTINGS_ENV = "FARMEYE_WORKER_SETTINGS"
"""Environment variable holding the settings as JSON for worker processes."""

DEFAULT_BATCH_SIZE: dict[str, int] = {"cpu": 8, "gpu": 64}
"""Images per forward pass when none is given: a CPU gains little past 8."""

DEFAULT_BATCH_WAIT_MS: dict[str, float] = {"cpu": 25.0, "gpu": 10.0}
"""Longest wait for a batch to fill, about the time of one forward pass."""

READY_FILE_ENV = "FARMEYE_WORKER_READY_FILE"
"""File a worker process writes (pid, model version) once it takes tasks."""

INDEX_ENV = "FARMEYE_WORKER_INDEX"
"""Number of a process among its machine's workers (picks its GPU)."""

PARENT_ENV = "FARMEYE_WORKER_PARENT_PID"
"""Supervisor pid; a process shuts down warmly when that one is gone."""

EXIT_START_FAILED = 3
"""Exit status of a process whose model or device could not be set up."""

PREFETCH_BATCHES = 3
"""Batches a process holds at once: one filling, one in the model, one storing."""


class WorkerSettings(BaseModel):
    """Settings of the analysis workers of one machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str = Field(description="PostgreSQL URL analyses are stored in.")
    redis_url: str = Field(description="Redis URL of the task queue and events.")
    model: str = Field(
        default="full",
        description="'full' for the shipped model, or a model file with its card.",
    )
    device: Device = Field(
        default="cpu", description="Run the model on the CPU or on a GPU."
    )
    concurrency: int = Field(
        default=1,
        ge=1,
        description="Worker processes; several share a GPU (see docs/workers.md).",
    )
    batch_size: int = Field(
        default=0,
        ge=0,
        description="Most images per forward pass (default 8 on a CPU, 64 on a GPU).",
    )
    batch_wait_ms: float = Field(
        default=-1.0,
        description="Longest wait in ms for a batch to fill (default 25 CPU, 10 GPU).",
    )
    mixed_precision: bool = Field(
        default=False, description="Compute in float16 where it is safe (GPU)."
    )
    visibility_timeout_s: float = Field(
        default=float(VISIBILITY_TIMEOUT_S),
        gt=0,
        description="Seconds before Redis hands an unacknowledged task to another"
        " worker; must exceed the longest batch.",
    )
    max_image_retries: int = Field(
        default=2,
        ge=0,
        description="Retries of a photo that cannot be decoded before it is"
        " recorded as failed.",
    )
    max_worker_crashes: int = Field(
        default=3,
        ge=1,
        description="Worker processes a photo may take down with it before it is"
        " recorded as failed instead of analysed again.",
    )
    retry_delay_s: float = Field(
        default=2.0, ge=0, description="Seconds before a retried task runs again."
    )
    database_retry_window_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a batch keeps retrying an unreachable database before"
        " its tasks are retried later.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of the Prometheus metrics of all processes (none: off).",
    )
    log_level: str = Field(default="WARNING", description="Level of worker logs.")

    @model_validator(mode="after")
    def _task_deadline_fits(self) -> WorkerSettings:
        if self.task_deadline_s < 2.0:
            raise ValueError(
                f"visibility_timeout_s {self.visibility_timeout_s} leaves no time "
                "to analyse a batch; use at least 4 seconds"
            )
        return self

    @property
    def effective_batch_size(self) -> int:
        """``batch_size``, or the default of the device when it is 0."""
        return self.batch_size or DEFAULT_BATCH_SIZE[self.device]

    @property
    def effective_batch_wait_s(self) -> float:
        """``batch_wait_ms`` in seconds, or the device's default when negative."""
        wait_ms = self.batch_wait_ms
        if wait_ms < 0:
            wait_ms = DEFAULT_BATCH_WAIT_MS[self.device]
        return wait_ms / 1000.0

    @property
    def threads(self) -> int:
        """Task threads (and so prefetched tasks) of one worker process."""
        return PREFETCH_BATCHES * self.effective_batch_size

    @property
    def task_deadline_s(self) -> float:
        """How long a task may wait for its batch before it is retried.

        Half the visibility timeout: the task is acknowledged or retried
        before Redis would hand it to another worker.
        """
        return self.visibility_timeout_s / 2

    def to_env(self) -> str:
        """The settings as the value of :data:`SETTINGS_ENV`."""
        return self.model_dump_json()


def settings_from_env() -> WorkerSettings | None:
    """The settings a supervisor passed down, or ``None`` when there are none."""
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        return None
    return WorkerSettings.model_validate_json(raw)


def describe(field: str) -> str:
    """The one-line description of a field, for ``--help``."""
    return WorkerSettings.model_fields[field].description or ""
