"""``farmeye agent``: run the edge agent of a coop camera.

Logs go to stdout as plain ``LEVEL logger: message`` lines, which journald
stamps and stores as they are. Only the ``agent`` extra is needed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

CONFIG_ENV = "FARMEYE_AGENT_CONFIG"
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


@click.command()
@click.option(
    "--config",
    "config_file",
    envvar=CONFIG_ENV,
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Agent YAML config (default: ${CONFIG_ENV}).",
)
@click.option(
    "--check", is_flag=True, help="Check the config and exit without running."
)
@click.option(
    "--describe-config",
    is_flag=True,
    help="Print every config key with its description and exit.",
)
def agent(config_file: Path | None, check: bool, describe_config: bool) -> None:
    """Run the camera agent: capture, spool, upload, report, display."""
    if describe_config:
        _describe_config()
        return
    if config_file is None:
        raise click.UsageError(f"give --config FILE or set ${CONFIG_ENV}")

    from edge_agent.config import ConfigError, load_config

    try:
        config = load_config(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _setup_logging(config.log_level)
    if check:
        click.echo(f"{config_file}: OK (device {config.device_id})")
        return

    from edge_agent.agent import run_agent
    from edge_agent.cameras import CameraUnavailable
    from edge_agent.display import DisplayError
    from edge_agent.spool import SpoolError
    from farmeye.models import ModelError

    try:
        asyncio.run(run_agent(config))
    except (
        CameraUnavailable,
        ConfigError,
        DisplayError,
        ModelError,
        SpoolError,
    ) as exc:
        raise click.ClickException(str(exc)) from None


def _setup_logging(level: str) -> None:
    """Replace the CLI's stderr logging with plain stdout lines for journald."""
    logging.basicConfig(level=level, stream=sys.stdout, format=LOG_FORMAT, force=True)


def _describe_config() -> None:
    from edge_agent.config import config_models

    for model in config_models():
        click.echo(f"{model.__name__}: {(model.__doc__ or '').strip()}")
        for name, field in model.model_fields.items():
            click.echo(f"  {name}: {field.description}")
