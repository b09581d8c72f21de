"""Throwaway PostgreSQL databases for tests, on whichever server the session uses."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator


@contextlib.contextmanager
def fresh_database(server_url: str, prefix: str) -> Iterator[str]:
    """Create and migrate a database named ``prefix_<random>``; drop it after."""
    from farmeye import db

    name = f"{prefix}_{secrets.token_hex(6)}"
    admin_sql(server_url, f'CREATE DATABASE "{name}"')
    url = db.replace_database(server_url, name)
    try:
        db.migrate(url)
        yield url
    finally:
        admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def admin_sql(url: str, statement: str) -> None:
    """Run a statement that cannot run inside a transaction (CREATE DATABASE)."""
    from farmeye import db

    connection = db.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()
