"""``farmeye devices`` and ``farmeye users``: who may send photos and who may look.

Secrets and tokens are printed once, when made; the database keeps only
what verifies them, so a lost one is replaced, never recovered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from farmeye.commands.db import config_option, connection_for

if TYPE_CHECKING:
    from farmeye.db import Device

ROLE_CHOICES = ("manager", "viewer", "admin")

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text."
)


@click.group()
def devices() -> None:
    """Register, list, revoke and re-key coop cameras."""


@devices.command("add")
@click.argument("name")
@click.option("--coop", required=True, help="Coop the camera watches (created if new).")
@click.option(
    "--farm",
    default=None,
    help="Farm of the coop (created if new; default: the only farm).",
)
@json_option
@config_option
def add_device(
    name: str, coop: str, farm: str | None, as_json: bool, config_file: Path | None
) -> None:
    """Register camera NAME and print its id and secret (shown only once)."""
    from farmeye import db

    with connection_for(config_file) as connection:
        device = db.add_device(connection, name, coop, farm)
    if as_json:
        _echo_json({"device_id": device.device_id, "secret": device.secret})
        return
    click.echo(f"device_id: {device.device_id}")
    click.echo(f"secret: {device.secret}")
    click.echo(
        "Put both on the camera now; the secret is not stored and cannot be "
        "shown again.",
        err=True,
    )


@devices.command("list")
@json_option
@config_option
def list_devices(as_json: bool, config_file: Path | None) -> None:
    """List every device with its coop, state and last contact."""
    from farmeye import db

    with connection_for(config_file) as connection:
        rows = db.list_devices(connection)
    if as_json:
        _echo_json([_device_json(device) for device in rows])
        return
    if not rows:
        click.echo("no devices; add one with `farmeye devices add NAME --coop COOP`")
        return
    for device in rows:
        click.echo(_device_line(device))


@devices.command("revoke")
@click.argument("device_id")
@config_option
def revoke_device(device_id: str, config_file: Path | None) -> None:
    """Refuse DEVICE_ID from now on (its open connection is not cut here)."""
    from farmeye import db

    with connection_for(config_file) as connection:
        newly = db.revoke_device(connection, device_id)
    click.echo(f"revoked {device_id}" if newly else f"{device_id} was already revoked")


@devices.command("rotate")
@click.argument("device_id")
@json_option
@config_option
def rotate_device(device_id: str, as_json: bool, config_file: Path | None) -> None:
    """Give DEVICE_ID a new secret (shown once); the old one stops working."""
    from farmeye import db

    with connection_for(config_file) as connection:
        secret = db.rotate_device_secret(connection, device_id)
    if as_json:
        _echo_json({"device_id": device_id, "secret": secret})
        return
    click.echo(f"device_id: {device_id}")
    click.echo(f"secret: {secret}")


@click.group()
def users() -> None:
    """Give people access to a farm's history, alerts and dashboard."""


@users.command("add")
@click.argument("name")
@click.option("--farm", required=True, help="Farm the user gets access to.")
@click.option(
    "--role",
    required=True,
    type=click.Choice(ROLE_CHOICES),
    help="admin: manage; manager: acknowledge and correct; viewer: look only.",
)
@json_option
@config_option
def add_user(
    name: str, farm: str, role: str, as_json: bool, config_file: Path | None
) -> None:
    """Give user NAME ROLE in FARM and print a new API token (shown only once).

    For an existing user this also replaces the token: the old one stops
    working, which is how a lost or leaked token is rotated.
    """
    from farmeye import db

    with connection_for(config_file) as connection:
        user = db.add_user(connection, name, farm, role)
    if as_json:
        _echo_json({"user_id": user.user_id, "token": user.token})
        return
    click.echo(f"user_id: {user.user_id}")
    click.echo(f"token: {user.token}")
    if user.replaced:
        click.echo(f"The previous token of {name} no longer works.", err=True)


def _device_json(device: Device) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "device_id": device.id,
        "name": device.name,
        "farm": device.farm,
        "coop": device.coop,
        "created_at": iso(device.created_at),
        "revoked_at": iso(device.revoked_at),
        "last_seen_at": iso(device.last_seen_at),
        "online": device.online,
    }


def _device_line(device: Device) -> str:
    if device.revoked_at is not None:
        state = "revoked"
    else:
        state = "online" if device.online else "offline"
    seen = (
        device.last_seen_at.isoformat(timespec="seconds")
        if device.last_seen_at
        else "never"
    )
    return (
        f"{device.id}  {device.name}  {device.farm}/{device.coop}  {state}  "
        f"last seen {seen}"
    )


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=None))
