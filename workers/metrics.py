"""Prometheus metrics of the analysis workers of one machine.

Each Celery worker process records into files of a shared folder
(``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before it starts them);
the supervisor serves the sum of all processes on ``--metrics-port``. Scrape
one target per worker machine; ``instance`` tells machines apart.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client import multiprocess as prometheus_multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

BATCH_SIZE = Histogram(
    "farmeye_worker_batch_size",
    "Images per forward pass of the full model.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_WAIT = Histogram(
    "farmeye_worker_queue_wait_seconds",
    "From the hub publishing a task to the start of its batch.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
INFERENCE = Histogram(
    "farmeye_worker_inference_seconds",
    "Forward pass of one batch, Grad-CAM included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STORE = Histogram(
    "farmeye_worker_store_seconds",
    "Storing and announcing one batch of analyses (commit and publish).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30),
)
ANALYSES = Counter(
    "farmeye_worker_analyses",
    "Analyses stored, by status (done or failed).",
    ["status"],
)
FAILURES = Counter(
    "farmeye_worker_failures",
    "Tasks that did not succeed this time, by reason (image, inference, "
    "database, timeout, unknown_capture).",
    ["reason"],
)
RETRIES = Counter(
    "farmeye_worker_retries",
    "Tasks sent back to the queue for another attempt, by reason.",
    ["reason"],
)
MODEL = Gauge(
    "farmeye_worker_model_info",
    "1 for the model version each live process runs.",
    ["version", "device"],
    multiprocess_mode="liveall",
)


def prepare_multiprocess_dir() -> Path:
    """A fresh folder for the processes' metric files, in the environment."""
    path = Path(tempfile.mkdtemp(prefix="farmeye-worker-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def remove_multiprocess_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def process_exited(pid: int) -> None:
    """Forget the live gauges of a process that has ended."""
    if os.environ.get(MULTIPROC_ENV):
        prometheus_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve(port: int) -> Any:
    """Serve the sum of every worker process's metrics on ``port``."""
    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, registry=registry)
    return server
