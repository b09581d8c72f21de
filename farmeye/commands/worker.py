"""``farmeye worker``: the analysis workers of one machine.

Needs only the PostgreSQL and Redis URLs (config file, ``FARMEYE_DATABASE_URL``
and ``FARMEYE_REDIS_URL``, or a running ``farmeye up``); photos arrive inside
the tasks. Prints one line once every process has loaded the model and takes
tasks, and another after each reload (SIGHUP).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from farmeye.config import ConfigError, load_settings, resolve_urls
from farmeye.models import ModelError
from workers.settings import WorkerSettings, describe
from workers.supervisor import Supervisor, SupervisorError


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="FarmEye YAML config (database_url, redis_url).",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=1, help=describe("concurrency")
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "gpu"]),
    default="cpu",
    show_default=True,
    help=describe("device"),
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help=describe("batch_size"),
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(min=0),
    default=None,
    help=describe("batch_wait_ms"),
)
@click.option("--mixed-precision", is_flag=True, help=describe("mixed_precision"))
@click.option("--model", default="full", show_default=True, help=describe("model"))
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    envvar="FARMEYE_WORKER_METRICS_PORT",
    help=describe("metrics_port"),
)
@click.option(
    "--visibility-timeout-s",
    type=click.FloatRange(min=4),
    default=None,
    envvar="FARMEYE_WORKER_VISIBILITY_TIMEOUT_S",
    help=describe("visibility_timeout_s"),
)
@click.option(
    "--max-image-retries",
    type=click.IntRange(min=0),
    default=None,
    envvar="FARMEYE_WORKER_MAX_IMAGE_RETRIES",
    help=describe("max_image_retries"),
)
@click.option(
    "--retry-delay-s",
    type=click.FloatRange(min=0),
    default=None,
    envvar="FARMEYE_WORKER_RETRY_DELAY_S",
    help=describe("retry_delay_s"),
)
def worker(
    config_file: Path | None,
    concurrency: int,
    device: str,
    batch_size: int | None,
    batch_wait_ms: float | None,
    mixed_precision: bool,
    model: str,
    metrics_port: int | None,
    visibility_timeout_s: float | None,
    max_image_retries: int | None,
    retry_delay_s: float | None,
) -> None:
    """Run the full model on queued captures, in batches, until stopped.

    SIGTERM finishes the current batches and exits; SIGHUP replaces the
    processes one by one so that a newly installed model goes live.
    """
    options: dict[str, Any] = {
        "concurrency": concurrency,
        "device": device,
        "batch_size": batch_size,
        "batch_wait_ms": batch_wait_ms,
        "mixed_precision": mixed_precision,
        "model": model,
        "metrics_port": metrics_port,
        "visibility_timeout_s": visibility_timeout_s,
        "max_image_retries": max_image_retries,
        "retry_delay_s": retry_delay_s,
    }
    try:
        database_url, redis_url = resolve_urls(load_settings(config_file))
        settings = WorkerSettings(
            database_url=database_url,
            redis_url=redis_url,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            **{key: value for key, value in options.items() if value is not None},
        )
        status = Supervisor(settings, announce=click.echo).run()
    except (ConfigError, ModelError, SupervisorError) as exc:
        raise click.ClickException(str(exc)) from None
    except ValidationError as exc:
        raise click.ClickException(f"invalid worker options: {exc}") from None
    sys.exit(status)
