"""The ``farmeye`` command.

Each subcommand lives in a module of :mod:`farmeye.commands` and is imported
only when it runs, so the camera agent never pays for TensorFlow or psycopg2.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys

import click

from farmeye import __version__

COMMANDS: dict[str, str] = {
    "agent": "farmeye.commands.agent:agent",
    "analyses": "farmeye.commands.analyses:analyses",
    "db": "farmeye.commands.db:db",
    "devices": "farmeye.commands.admin:devices",
    "diagnose": "farmeye.commands.models:diagnose",
    "evaluate": "farmeye.commands.models:evaluate",
    "history": "farmeye.commands.history:history",
    "hub": "farmeye.commands.hub:hub",
    "train": "farmeye.commands.models:train",
    "up": "farmeye.commands.up:up",
    "upload": "farmeye.commands.upload:upload",
    "users": "farmeye.commands.admin:users",
    "worker": "farmeye.commands.worker:worker",
}
"""Subcommand name -> ``module:attribute`` of its click command."""


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, target in COMMANDS.items() if _exists(target))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not _exists(target):
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)  # noqa: S101
        return command


def _exists(target: str) -> bool:
    return importlib.util.find_spec(target.split(":")[0]) is not None


def setup_logging(verbose: int) -> None:
    """Plain lines on stderr, which journald and terminals both read well."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="farmeye")
@click.option(
    "-v", "--verbose", count=True, help="More log output (-v info, -vv debug)."
)
def main(verbose: int) -> None:
    """FarmEye: early disease detection for poultry farms from photos of droppings."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    setup_logging(verbose)


if __name__ == "__main__":
    main()
