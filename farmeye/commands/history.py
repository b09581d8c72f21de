"""``farmeye history``: what the cameras saw and what the models said.

Reads PostgreSQL directly (the configured database, or that of the local
``farmeye up``), newest first, as a table or JSON lines.
"""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from farmeye.commands.db import config_option, connection_for

if TYPE_CHECKING:
    from farmeye.db import Connection


@click.command()
@click.option("--coop", default=None, help="Only this coop: its id or its name.")
@click.option(
    "--since",
    default=None,
    help="Only photos taken since: RFC 3339 time or a duration such as 24h or 7d.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="Most photos listed.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines for scripts.")
@config_option
def history(
    coop: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    config_file: Path | None,
) -> None:
    """List recent captures with their triage and analysis verdicts."""
    from hub.http import parse_time
    from hub.repository import CaptureQuery, list_captures

    try:
        since_time = parse_time(since) if since else None
    except ValueError:
        raise click.BadParameter(
            "use an RFC 3339 time or a duration such as 30m, 24h, 7d",
            param_hint="--since",
        ) from None
    with connection_for(config_file) as connection:
        coop_id = _coop_id(connection, coop) if coop else None
        query = CaptureQuery(
            farm_ids=None, coop_id=coop_id, since=since_time, limit=limit
        )
        with connection:
            rows = list_captures(connection, query)[:limit]
            names = _coop_names(connection)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=_json_default))
        return
    _print_table(rows, names)


def _coop_id(connection: Connection, coop: str) -> int:
    """The id of a coop given by id or by (unambiguous) name."""
    with connection, connection.cursor() as cursor:
        if coop.isdigit():
            cursor.execute("SELECT id FROM coops WHERE id = %s", (int(coop),))
        else:
            cursor.execute(
                "SELECT c.id, f.name FROM coops c JOIN farms f ON f.id = c.farm_id"
                " WHERE c.name = %s",
                (coop,),
            )
        rows = cursor.fetchall()
    if not rows:
        raise click.BadParameter(f"no coop {coop!r}", param_hint="--coop")
    if len(rows) > 1:
        farms = ", ".join(str(row[1]) for row in rows)
        raise click.BadParameter(
            f"coop {coop!r} exists in several farms ({farms}); give its id",
            param_hint="--coop",
        )
    return int(rows[0][0])


def _coop_names(connection: Connection) -> dict[int, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.id, f.name || '/' || c.name FROM coops c"
            " JOIN farms f ON f.id = c.farm_id"
        )
        return {int(coop_id): str(name) for coop_id, name in cursor.fetchall()}


def _print_table(rows: list[dict[str, Any]], names: dict[int, str]) -> None:
    if not rows:
        click.echo("no captures match")
        return
    header = ("ID", "CAPTURED (UTC)", "COOP", "DEVICE", "TRIAGE", "ANALYSIS")
    lines = [header] + [_table_row(row, names) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


def _table_row(row: dict[str, Any], names: dict[int, str]) -> tuple[str, ...]:
    captured = row["captured_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return (
        str(row["id"]),
        captured,
        names.get(row["coop_id"], str(row["coop_id"])),
        row["device_id"] or "-",
        _verdict(row["triage"]),
        _verdict(row["analysis"]),
    )


def _verdict(verdict: dict[str, Any] | None) -> str:
    if not verdict:
        return "-"
    if verdict.get("status") == "failed":
        return "failed"
    label = verdict.get("label") or "-"
    score = (verdict.get("scores") or {}).get(label)
    return f"{label} {score:.2f}" if isinstance(score, int | float) else label


def _json_default(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
