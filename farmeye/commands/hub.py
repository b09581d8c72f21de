"""``farmeye hub``: the hub against PostgreSQL and Redis that run elsewhere.

The URLs come from ``FARMEYE_DATABASE_URL`` / ``FARMEYE_REDIS_URL``, a config
file, or a running ``farmeye up`` on this machine. Missing migrations are
applied at start (safe with several hubs starting at once).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from farmeye.commands.db import config_option

if TYPE_CHECKING:
    from farmeye.config import Settings


@click.command()
@config_option
def hub(config_file: Path | None) -> None:
    """Run the hub: camera ingest, triage, dispatch, REST, WebSocket, dashboard."""
    from farmeye import db
    from farmeye.config import ConfigError, load_settings, resolve_urls

    try:
        settings = load_settings(config_file)
        database_url, redis_url = resolve_urls(settings)
        db.migrate(database_url)
    except (ConfigError, db.DatabaseError) as exc:
        raise click.ClickException(str(exc)) from None
    root = logging.getLogger()
    root.setLevel(min(root.level, logging.getLevelName(settings.log_level)))
    asyncio.run(_serve(settings, database_url, redis_url))


async def _serve(settings: Settings, database_url: str, redis_url: str) -> None:
    from hub.server import Hub

    server = Hub(settings, database_url, redis_url)
    try:
        await server.start()
    except OSError as exc:
        await server.stop()
        raise click.ClickException(
            f"cannot listen: {exc.strerror or exc}; check ingest_port and "
            "http_port, or stop the program that holds them"
        ) from None
    assert server.ingest_address and server.http_address  # noqa: S101
    click.echo(
        f"hub: ingest {_address(server.ingest_address)} "
        f"http http://{_address(server.http_address)}"
    )
    await server.serve_until_signalled()


def _address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
