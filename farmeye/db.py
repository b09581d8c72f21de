"""PostgreSQL access shared by the hub, workers and admin commands.

Schema changes are the numbered files in ``schemas/migrations``; :func:`migrate`
applies the missing ones, each in its own transaction, under an advisory
lock so that several hubs and workers starting together apply each once.

The admin helpers commit their own transaction: each is one complete
change that a command performs and reports.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions

from farmeye import auth

logger = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection

MIGRATION_LOCK_KEY = 0x4641_524D_4559_4531
"""Advisory lock held while migrating (the bytes of ``FARMEYE1``)."""

MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
"""A migration file: three digits, an underscore, a lower-case name."""

ROLES: tuple[str, ...] = ("manager", "viewer", "admin")
"""What a user may do in a farm: admin manages users and devices, manager
acknowledges alerts and gives feedback, viewer only looks."""

DEFAULT_FARM = "default"
"""Farm created when a device is added before any farm exists."""


class DatabaseError(RuntimeError):
    """A database request that cannot be done; the message says why."""


class DatabaseUnavailable(DatabaseError):
    """The server did not accept a connection."""


class NotFound(DatabaseError, LookupError):
    """A farm, device or user named in a request does not exist."""


@dataclass(frozen=True)
class NewDevice:
    """A device just added; ``secret`` exists nowhere else, show it once."""

    device_id: str
    secret: str
    farm_id: int
    coop_id: int


@dataclass(frozen=True)
class Device:
    """A device as the admin listing shows it."""

    id: str
    name: str
    farm: str
    coop: str
    created_at: datetime
    revoked_at: datetime | None
    last_seen_at: datetime | None
    online: bool


@dataclass(frozen=True)
class NewUser:
    """A user's fresh token, shown once; ``replaced`` when an old one died."""

    user_id: int
    token: str
    replaced: bool


@dataclass(frozen=True)
class User:
    """The user an API token belongs to."""

    id: int
    name: str


@dataclass(frozen=True)
class Membership:
    """A user's role in one farm."""

    farm_id: int
    farm: str
    role: str


def connect(
    url: str, *, connect_timeout_s: int = 10, application_name: str = "farmeye"
) -> Connection:
    """Open a connection, or raise :class:`DatabaseUnavailable` saying where."""
    try:
        return psycopg2.connect(
            url,
            connect_timeout=connect_timeout_s,
            application_name=application_name,
        )
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "refused"
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact(url)}: {reason}; check "
            "database_url, or start `farmeye up` for the embedded server"
        ) from None


def redact(url: str) -> str:
    """``url`` with its password replaced, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = quote(parts.username or "", safe="")
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def replace_database(url: str, database: str) -> str:
    """The same server and login as ``url``, but database ``database``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


def migrations_dir() -> Path:
    """The ``schemas/migrations`` folder shipped with the package."""
    spec = importlib.util.find_spec("schemas")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseError("the schemas package is missing; reinstall farmeye")
    return Path(list(spec.submodule_search_locations)[0]) / "migrations"


def migration_files(directory: Path | None = None) -> list[tuple[str, Path]]:
    """``(version, path)`` of every migration, in the order to apply them."""
    folder = directory or migrations_dir()
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if match is None:
            raise DatabaseError(
                f"{path} is not named like a migration (NNN_name.sql); rename it"
            )
        number = match.group(1)
        if number in {version[:3] for version in found}:
            raise DatabaseError(f"two migrations share number {number} in {folder}")
        found[path.stem] = path
    return list(found.items())


def migrate(url: str, directory: Path | None = None) -> list[str]:
    """Apply the migrations the database lacks; return their versions.

    Safe to run from several processes at once and again at every start:
    the advisory lock makes the others wait, then find nothing left to do.
    """
    files = migration_files(directory)
    connection = connect(url, application_name="farmeye-migrate")
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            return _apply_missing(connection, files)
        finally:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    finally:
        connection.close()


def applied_migrations(connection: Connection) -> list[str]:
    """Versions recorded in ``schema_migrations``, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = cursor.fetchone()
        if row is None or not row[0]:
            return []
        cursor.execute("SELECT version FROM schema_migrations ORDER BY version")
        return [version for (version,) in cursor.fetchall()]


def _apply_missing(connection: Connection, files: list[tuple[str, Path]]) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
    done = set(applied_migrations(connection))
    unknown = done - {version for version, _ in files}
    if unknown:
        logger.warning(
            "database has migrations this code does not know (%s); is it older "
            "than the database?",
            ", ".join(sorted(unknown)),
        )

    applied = []
    for version, path in files:
        if version not in done:
            _apply(connection, version, path)
            applied.append(version)
    return applied


def _apply(connection: Connection, version: str, path: Path) -> None:
    sql = path.read_text(encoding="utf-8")
    connection.autocommit = False
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql)
            cursor.execute(
                "INSERT INTO schema_migrations (version) VALUES (%s)", (version,)
            )
    except psycopg2.Error as exc:
        raise DatabaseError(
            f"migration {path.name} failed and was rolled back: {str(exc).strip()}"
        ) from exc
    logger.info("applied migration %s", version)


def ensure_farm(connection: Connection, name: str) -> int:
    """The id of farm ``name``, created if missing."""
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO farms (name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
            (name,),
        )
        cursor.execute("SELECT id FROM farms WHERE name = %s", (name,))
        return _one_int(cursor.fetchone())


def ensure_coop(connection: Connection, farm_id: int, name: str) -> int:
    """The id of coop ``name`` in the farm, created if missing."""
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO coops (farm_id, name) VALUES (%s, %s)"
            " ON CONFLICT (farm_id, name) DO NOTHING",
            (farm_id, name),
        )
        cursor.execute(
            "SELECT id FROM coops WHERE farm_id = %s AND name = %s", (farm_id, name)
        )
        return _one_int(cursor.fetchone())


def default_farm(connection: Connection) -> int:
    """The only farm, created as ``default`` if none; several is an error."""
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT id, name FROM farms ORDER BY name LIMIT 6")
        rows = cursor.fetchall()
    if not rows:
        return ensure_farm(connection, DEFAULT_FARM)
    if len(rows) == 1:
        return int(rows[0][0])
    names = ", ".join(name for _, name in rows[:5]) + (", ..." if len(rows) > 5 else "")
    raise DatabaseError(f"several farms exist ({names}); name the farm to use")


def add_device(
    connection: Connection,
    name: str,
    coop: str,
    farm: str | None = None,
    *,
    iterations: int = auth.DEFAULT_ITERATIONS,
) -> NewDevice:
    """Register a device in ``coop`` (farm and coop created when missing).

    Only the salt and verifier are stored; the returned secret is the one
    copy, to be put on the device.
    """
    farm_id = ensure_farm(connection, farm) if farm else default_farm(connection)
    coop_id = ensure_coop(connection, farm_id, coop)
    device_id = auth.new_device_id()
    secret = auth.new_secret()
    salt, verifier, rounds = auth.make_verifier(secret, iterations=iterations)
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO devices (id, name, coop_id, salt, verifier, iterations)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (device_id, name, coop_id, salt, verifier, rounds),
        )
    logger.info("added device %s (%s) to coop %s", device_id, name, coop_id)
    return NewDevice(device_id, secret, farm_id, coop_id)


def list_devices(connection: Connection, *, farm: str | None = None) -> list[Device]:
    """Every device (of ``farm`` if given), by farm, coop and name."""
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.id, d.name, f.name, c.name, d.created_at, d.revoked_at,"
            "       d.last_seen_at, d.online"
            "  FROM devices d JOIN coops c ON c.id = d.coop_id"
            "  JOIN farms f ON f.id = c.farm_id"
            " WHERE %(farm)s::text IS NULL OR f.name = %(farm)s"
            " ORDER BY f.name, c.name, d.name, d.id",
            {"farm": farm},
        )
        return [Device(*row) for row in cursor.fetchall()]


def revoke_device(connection: Connection, device_id: str) -> bool:
    """Refuse the device from now on; ``False`` if it was already revoked."""
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "UPDATE devices SET revoked_at = now(), online = false"
            " WHERE id = %s AND revoked_at IS NULL RETURNING id",
            (device_id,),
        )
        if cursor.fetchone() is not None:
            logger.info("revoked device %s", device_id)
            return True
        cursor.execute("SELECT 1 FROM devices WHERE id = %s", (device_id,))
        if cursor.fetchone() is None:
            raise NotFound(f"no device {device_id!r}; list them with `devices list`")
        return False


def rotate_device_secret(
    connection: Connection,
    device_id: str,
    *,
    iterations: int = auth.DEFAULT_ITERATIONS,
) -> str:
    """Give a (not revoked) device a new secret; the old one stops working."""
    secret = auth.new_secret()
    salt, verifier, rounds = auth.make_verifier(secret, iterations=iterations)
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "UPDATE devices SET salt = %s, verifier = %s, iterations = %s"
            " WHERE id = %s AND revoked_at IS NULL RETURNING id",
            (salt, verifier, rounds, device_id),
        )
        if cursor.fetchone() is None:
            raise NotFound(
                f"no active device {device_id!r}; a revoked device cannot get a "
                "new secret, add a new device instead"
            )
    logger.info("issued a new secret to device %s", device_id)
    return secret


def add_user(connection: Connection, name: str, farm: str, role: str) -> NewUser:
    """Give user ``name`` ``role`` in ``farm`` and a fresh token.

    For an existing user the membership is added or changed and the token
    replaced, which is also how a lost or leaked token is rotated.
    """
    if role not in ROLES:
        raise DatabaseError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    farm_id = ensure_farm(connection, farm)
    token = auth.new_token()
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO users (name, token_hash) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE"
            "   SET token_hash = EXCLUDED.token_hash, revoked_at = NULL"
            " RETURNING id, (xmax <> 0)",
            (name, auth.token_hash(token)),
        )
        row = _one_row(cursor.fetchone())
        user_id, replaced = _one_int(row), bool(row[1])
        cursor.execute(
            "INSERT INTO memberships (user_id, farm_id, role) VALUES (%s, %s, %s)"
            " ON CONFLICT (user_id, farm_id) DO UPDATE SET role = EXCLUDED.role",
            (user_id, farm_id, role),
        )
    logger.info("user %s is %s of farm %s", name, role, farm)
    return NewUser(user_id, token, replaced)


def user_for_token(connection: Connection, token: str) -> User | None:
    """The active user holding ``token``, or ``None``."""
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, name FROM users WHERE token_hash = %s AND revoked_at IS NULL",
            (auth.token_hash(token),),
        )
        row = cursor.fetchone()
    return User(int(row[0]), row[1]) if row is not None else None


def farms_of_user(connection: Connection, user_id: int) -> list[Membership]:
    """The farms a user belongs to and the role in each, by farm name."""
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT f.id, f.name, m.role FROM memberships m"
            "  JOIN farms f ON f.id = m.farm_id"
            " WHERE m.user_id = %s ORDER BY f.name",
            (user_id,),
        )
        return [Membership(int(fid), fname, role) for fid, fname, role in cursor]


def _one_row(row: tuple[object, ...] | None) -> tuple[object, ...]:
    if row is None:
        raise DatabaseError("the database returned no row where one was expected")
    return row


def _one_int(row: tuple[object, ...] | None) -> int:
    value = _one_row(row)[0]
    if not isinstance(value, int):
        raise DatabaseError(f"expected an integer id, got {value!r}")
    return value
