"""Writing analyses to PostgreSQL: one transaction per batch, exactly once.

``analyses`` is unique on ``(capture_id, model_version)`` and rows go in with
``ON CONFLICT DO NOTHING``, so a task that Redis delivers twice (a worker
killed before its acknowledgement, a hub that sent twice) leaves the first
row alone. The same transaction moves each capture's ``dispatch_state`` to the
status of its stored analysis and reads back what the event needs, so the
caller always announces what the database holds, even for a duplicate.

A lost connection (PostgreSQL restarting, a network blip) is retried with a
fresh connection until ``retry_window_s`` has passed; the transaction either
committed or did not, and a retry after an unseen commit only meets its own
rows and reports them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from farmeye import db

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")

APPLICATION_NAME = "farmeye-worker"
"""How worker sessions appear in ``pg_stat_activity``."""

RETRY_FIRST_DELAY_S = 0.2
RETRY_MAX_DELAY_S = 5.0

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    psycopg2.extensions.TransactionRollbackError,
    db.DatabaseUnavailable,
)
"""Errors after which the same transaction may well succeed on a new try."""

_INSERT_SQL = """
INSERT INTO analyses (capture_id, model_version, status, label, scores, error,
                      attempts, heatmap_map, batch_size)
SELECT r.capture_id, r.model_version, r.status, r.label, r.scores, r.error,
       r.attempts, r.heatmap_map, r.batch_size
  FROM (VALUES %s) AS r (capture_id, model_version, status, label, scores, error,
                         attempts, heatmap_map, batch_size)
  JOIN captures c ON c.id = r.capture_id
ON CONFLICT (capture_id, model_version) DO NOTHING
"""

_INSERT_TEMPLATE = (
    "(%s::bigint, %s::text, %s::text, %s::text, %s::jsonb, %s::text,"
    " %s::integer, %s::bytea, %s::integer)"
)

_SETTLE_SQL = """
UPDATE captures c SET dispatch_state = a.status
  FROM analyses a
 WHERE a.capture_id = c.id
   AND (a.capture_id, a.model_version) IN (
        SELECT * FROM unnest(%(capture_ids)s::bigint[], %(versions)s::text[]))
RETURNING c.id, a.model_version, a.status, a.label, a.scores, a.error,
          a.heatmap_png IS NOT NULL OR a.heatmap_map IS NOT NULL,
          c.farm_id, c.coop_id, c.device_id
"""


_RETURN_SQL = """
WITH capture AS (
    SELECT c.id, EXISTS (SELECT 1 FROM analyses a WHERE a.capture_id = c.id)
           AS analysed
      FROM captures c WHERE c.id = %(capture_id)s FOR UPDATE
), returned AS (
    UPDATE captures c SET dispatch_state = 'pending', dispatch_claimed_until = NULL
      FROM capture
     WHERE c.id = capture.id AND NOT capture.analysed
       AND c.dispatch_state = 'queued'
)
SELECT analysed FROM capture
"""

CaptureState = Literal["analysed", "pending", "unknown"]


class StoreUnavailable(RuntimeError):
    """The database stayed unreachable for the whole retry window."""


class UnknownCapture(LookupError):
    """The task names a capture the database does not have (deleted, or a
    database other than the hub's)."""


@dataclass(frozen=True)
class AnalysisRecord:
    """One analysis as the worker wants it stored."""

    capture_id: int
    model_version: str
    status: str
    label: str | None = None
    scores: dict[str, float] | None = None
    error: str | None = None
    attempts: int = 1
    heatmap_map: bytes | None = None
    """Evidence map as :func:`farmeye.heatmaps.encode_map` stores it."""
    batch_size: int | None = None

    @property
    def key(self) -> tuple[int, str]:
        return self.capture_id, self.model_version


@dataclass(frozen=True)
class StoredAnalysis:
    """An analysis as the database holds it, with what its event needs."""

    capture_id: int
    model_version: str
    status: str
    label: str | None
    scores: dict[str, float] | None
    error: str | None
    heatmap: bool
    farm_id: int
    coop_id: int
    device_id: str | None


class AnalysisStore:
    """Stores batches of analyses over one connection, reconnecting as needed."""

    def __init__(self, database_url: str, *, retry_window_s: float) -> None:
        self.database_url = database_url
        self.retry_window_s = retry_window_s
        self._connection: db.Connection | None = None

    def save(
        self, records: Sequence[AnalysisRecord]
    ) -> list[StoredAnalysis | UnknownCapture]:
        """Store ``records`` in one transaction; one result per record."""
        return self._retrying(
            lambda: self._save_once(records), f"store {len(records)} analyses"
        )

    def return_to_hub(self, capture_id: int) -> CaptureState:
        """Hand a capture whose photo is gone back to the hub's dispatcher.

        Returns ``"analysed"`` if it already has an analysis (the task was a
        redelivery), ``"unknown"`` if the capture does not exist, and
        ``"pending"`` once it is marked for the hub to queue again.
        """
        return self._retrying(
            lambda: self._return_once(capture_id), f"return capture {capture_id}"
        )

    def _retrying(self, attempt: Callable[[], ResultT], what: str) -> ResultT:
        deadline_s = time.monotonic() + self.retry_window_s
        delay_s = RETRY_FIRST_DELAY_S
        while True:
            try:
                return attempt()
            except TRANSIENT_ERRORS as exc:
                self._drop_connection()
                if time.monotonic() + delay_s > deadline_s:
                    raise StoreUnavailable(
                        f"database unreachable for {self.retry_window_s:.0f} s: "
                        f"{_first_line(exc)}"
                    ) from exc
                logger.warning(
                    "cannot %s (%s); retrying in %.1f s",
                    what,
                    _first_line(exc),
                    delay_s,
                )
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, RETRY_MAX_DELAY_S)

    def _return_once(self, capture_id: int) -> CaptureState:
        connection = self._connect()
        with connection, connection.cursor() as cursor:
            cursor.execute(_RETURN_SQL, {"capture_id": capture_id})
            row = cursor.fetchone()
        if row is None:
            return "unknown"
        return "analysed" if row[0] else "pending"

    def close(self) -> None:
        self._drop_connection()

    def _save_once(
        self, records: Sequence[AnalysisRecord]
    ) -> list[StoredAnalysis | UnknownCapture]:
        unique = list({record.key: record for record in reversed(records)}.values())
        connection = self._connect()
        with connection, connection.cursor() as cursor:
            psycopg2.extras.execute_values(
                cursor,
                _INSERT_SQL,
                [_row(record) for record in unique],
                template=_INSERT_TEMPLATE,
                page_size=max(1, len(unique)),
            )
            cursor.execute(
                _SETTLE_SQL,
                {
                    "capture_ids": [record.capture_id for record in unique],
                    "versions": [record.model_version for record in unique],
                },
            )
            stored = {(row[0], row[1]): _stored(row) for row in cursor.fetchall()}
        return [
            stored.get(record.key)
            or UnknownCapture(f"capture {record.capture_id} does not exist")
            for record in records
        ]

    def _connect(self) -> db.Connection:
        if self._connection is None or self._connection.closed:
            self._connection = db.connect(
                self.database_url, application_name=APPLICATION_NAME
            )
        return self._connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            try:
                connection.close()
            except psycopg2.Error:
                logger.debug("closing a broken connection failed", exc_info=True)


def _row(record: AnalysisRecord) -> tuple[Any, ...]:
    return (
        record.capture_id,
        record.model_version,
        record.status,
        record.label,
        json.dumps(record.scores) if record.scores is not None else None,
        record.error,
        record.attempts,
        psycopg2.Binary(record.heatmap_map) if record.heatmap_map else None,
        record.batch_size,
    )


def _stored(row: tuple[Any, ...]) -> StoredAnalysis:
    capture_id, version, status, label, scores, error, heatmap = row[:7]
    farm_id, coop_id, device_id = row[7:]
    return StoredAnalysis(
        capture_id=int(capture_id),
        model_version=str(version),
        status=str(status),
        label=label,
        scores=scores,
        error=error,
        heatmap=bool(heatmap),
        farm_id=int(farm_id),
        coop_id=int(coop_id),
        device_id=device_id,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
