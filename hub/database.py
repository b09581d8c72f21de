"""PostgreSQL from asyncio: blocking psycopg2 calls on a few threads.

Each thread of :class:`Database` keeps one connection. A unit of work is a
plain function taking a connection; it runs in one transaction, committed
when it returns. A connection that broke (PostgreSQL restarted, network cut)
is dropped and the work retried once on a fresh one; if that fails too the
caller gets :class:`farmeye.db.DatabaseUnavailable`. The hub therefore
recovers by itself when PostgreSQL comes back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg2

from farmeye import db
from farmeye.db import Connection, DatabaseUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5
"""Seconds to wait for PostgreSQL to accept a connection."""

_BROKEN = (psycopg2.OperationalError, psycopg2.InterfaceError)


class Database:
    """Runs units of work on ``threads`` connections, off the event loop."""

    def __init__(self, url: str, threads: int = 4, name: str = "farmeye-hub") -> None:
        self.url = url
        self.name = name
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="hub-db")
        self._local = threading.local()
        self._open: set[Connection] = set()
        self._lock = threading.Lock()

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(connection, *args)`` in a transaction and return its result."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self._call, work, args)
        return await loop.run_in_executor(self._executor, call)

    def _call(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        for attempt in (1, 2):
            connection = self._connection()
            try:
                return self._transaction(connection, work, args)
            except _BROKEN as exc:
                self._drop(connection)
                if attempt == 2:
                    raise DatabaseUnavailable(
                        f"lost the connection to PostgreSQL: {_first_line(exc)}"
                    ) from exc
                logger.info("database connection broke (%s); reconnecting", exc)
        raise AssertionError("unreachable")

    @staticmethod
    def _transaction(
        connection: Connection, work: Callable[..., T], args: tuple[Any, ...]
    ) -> T:
        # Not `with connection`: farmeye.db helpers open that block themselves,
        # and psycopg2 refuses to nest it.
        try:
            result = work(connection, *args)
            connection.commit()
        except BaseException:
            if not connection.closed:
                connection.rollback()
            raise
        return result

    def _connection(self) -> Connection:
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None or connection.closed:
            connection = db.connect(
                self.url,
                connect_timeout_s=CONNECT_TIMEOUT_S,
                application_name=self.name,
            )
            self._local.connection = connection
            with self._lock:
                self._open.add(connection)
        return connection

    def _drop(self, connection: Connection) -> None:
        self._local.connection = None
        with self._lock:
            self._open.discard(connection)
        try:
            connection.close()
        except psycopg2.Error:
            logger.debug("closing a broken connection failed", exc_info=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            connection.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
