"""``farmeye db``: database maintenance, and the helpers admin commands share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from farmeye.db import Connection

F = TypeVar("F", bound=Callable[..., Any])


def config_option(function: F) -> F:
    """The ``--config FILE`` option every command that reads settings takes."""
    option = click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="YAML settings file (default: $FARMEYE_CONFIG, then built-in defaults).",
    )
    return option(function)


def database_url_for(config_file: Path | None) -> str:
    """The database to use: configured, or that of a running ``farmeye up``."""
    from farmeye.config import ConfigError, load_settings, resolve_database_url

    try:
        return resolve_database_url(load_settings(config_file))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@contextmanager
def connection_for(config_file: Path | None) -> Iterator[Connection]:
    """A connection to the configured database; errors become CLI errors."""
    from farmeye import db

    try:
        connection = db.connect(database_url_for(config_file))
    except db.DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield connection
    except db.DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        connection.close()


@click.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@config_option
def migrate(config_file: Path | None) -> None:
    """Apply the schema migrations the database lacks (safe to repeat)."""
    from farmeye import db as database

    url = database_url_for(config_file)
    try:
        applied = database.migrate(url)
    except database.DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    for version in applied:
        click.echo(f"applied {version}")
    if not applied:
        click.echo(f"{database.redact(url)} is up to date")
