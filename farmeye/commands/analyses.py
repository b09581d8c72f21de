"""``farmeye analyses``: put failed analyses through the workers again.

An analysis fails for good when its photo cannot be decoded or the model
errs on every attempt; after a fix (a new worker, a photo restored to the
hub's store) ``retry`` hands those captures back to the hubs, which queue
them within seconds, as they do with any capture still waiting.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from farmeye.commands.db import config_option, connection_for


@click.group()
def analyses() -> None:
    """Manage the full analyses of captures."""


@analyses.command("retry")
@click.argument("capture_ids", metavar="[CAPTURE_ID]...", nargs=-1, type=int)
@click.option(
    "--all-failed",
    is_flag=True,
    help="Every failed capture whose photo the hub still has.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@config_option
def retry(
    capture_ids: tuple[int, ...],
    all_failed: bool,
    as_json: bool,
    config_file: Path | None,
) -> None:
    """Analyse failed captures again: the named ones, or --all-failed.

    Their failed analyses are deleted and they go back to waiting for
    dispatch; a running hub queues them within a few seconds. Exits 1 when
    a named capture could not be retried (done, still waiting, photo
    deleted, unknown); the others are retried all the same.
    """
    from hub.repository import retry_failed_captures

    if bool(capture_ids) == all_failed:
        raise click.UsageError("name the captures to retry, or give --all-failed")
    with connection_for(config_file) as connection:
        with connection:
            outcome = retry_failed_captures(
                connection, None if all_failed else capture_ids
            )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "retried": sorted(outcome.retried),
                    "refused": {str(k): v for k, v in sorted(outcome.refused.items())},
                }
            )
        )
    else:
        for capture_id, error in sorted(outcome.retried.items()):
            was = f" (it failed: {error})" if error else ""
            click.echo(f"capture {capture_id}: waiting for analysis again{was}")
        for capture_id, reason in sorted(outcome.refused.items()):
            click.echo(f"capture {capture_id}: not retried, {reason}", err=True)
        if not outcome.retried and all_failed:
            click.echo("no failed captures to retry")
    if outcome.refused:
        raise SystemExit(1)
