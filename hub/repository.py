"""The hub's SQL: every query it runs, as functions of a psycopg2 connection.

Each function is one unit of work for :meth:`hub.database.Database.run`,
which supplies the connection and the transaction. Rows go out as plain
dicts ready for JSON, so the API layer does no SQL and this module no HTTP.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg2.extras import Json, execute_values

from farmeye.auth import new_token, token_hash
from farmeye.db import Connection, farms_of_user, user_for_token
from farmeye.events import make_event
from hub.ingest import DeviceRecord


@dataclass(frozen=True)
class CaptureDraft:
    """A stored photo about to get its row."""

    device_id: str
    coop_id: int
    farm_id: int
    sha256: str
    size_bytes: int
    content_type: str
    captured_at: str
    storage_key: str


@dataclass(frozen=True)
class CaptureRow:
    capture_id: int
    duplicate: bool
    captured_at: datetime


@dataclass(frozen=True)
class PendingCapture:
    capture_id: int
    storage_key: str
    triage_label: str | None


@dataclass(frozen=True)
class DeviceState:
    """A device whose online flag just changed."""

    device_id: str
    farm_id: int
    coop_id: int
    online: bool


def ping(connection: Connection) -> None:
    """A round trip to the server, for health checks."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


# Devices


def find_device(connection: Connection, device_id: str) -> DeviceRecord | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.id, c.farm_id, d.coop_id, d.salt, d.verifier, d.iterations,"
            "       d.revoked_at IS NOT NULL, d.schedule"
            "  FROM devices d JOIN coops c ON c.id = d.coop_id WHERE d.id = %s",
            (device_id,),
        )
        row = cursor.fetchone()
    if row is None:
        return None
    device_id, farm_id, coop_id, salt, verifier, iterations, revoked, schedule = row
    return DeviceRecord(
        device_id,
        farm_id,
        coop_id,
        salt,
        bytes(verifier),
        iterations,
        revoked,
        schedule,
    )


def set_device_schedule(
    connection: Connection, device_id: str, schedule: Mapping[str, Any]
) -> None:
    """Keep the schedule the hub gave a device, for its next ``auth_ok``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE devices SET schedule = %s WHERE id = %s",
            (Json(dict(schedule)), device_id),
        )


def set_online(
    connection: Connection, device_id: str, online: bool
) -> DeviceState | None:
    """Record contact and the online flag; the new state if the flag changed."""
    # The subquery in RETURNING reads the row as it was before this UPDATE.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE devices d SET online = %(online)s, last_seen_at = now()"
            "  FROM coops c"
            " WHERE d.id = %(id)s AND c.id = d.coop_id"
            " RETURNING c.farm_id, d.coop_id,"
            "   (SELECT online FROM devices WHERE id = %(id)s)",
            {"id": device_id, "online": online},
        )
        row = cursor.fetchone()
    if row is None or row[2] == online:
        return None
    return DeviceState(device_id, row[0], row[1], online)


def touch_devices(connection: Connection, device_ids: Sequence[str]) -> None:
    """Record that the devices were heard from just now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE devices SET last_seen_at = now() WHERE id = ANY(%s)",
            (list(device_ids),),
        )


def mark_stale_offline(connection: Connection, after_s: float) -> list[DeviceState]:
    """Flag devices unheard for ``after_s`` as offline; return them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE devices d SET online = false FROM coops c"
            " WHERE c.id = d.coop_id AND d.online"
            "   AND (d.last_seen_at IS NULL"
            "        OR d.last_seen_at < now() - make_interval(secs => %s))"
            " RETURNING d.id, c.farm_id, d.coop_id",
            (after_s,),
        )
        return [DeviceState(i, f, c, False) for i, f, c in cursor.fetchall()]


def list_devices(
    connection: Connection, farm_ids: Sequence[int] | None
) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.id, d.name, c.farm_id, d.coop_id, c.name, d.online,"
            "       d.last_seen_at, d.revoked_at, d.created_at, d.schedule"
            "  FROM devices d JOIN coops c ON c.id = d.coop_id"
            " WHERE %(all)s OR c.farm_id = ANY(%(farms)s)"
            " ORDER BY c.farm_id, c.name, d.name",
            {"all": farm_ids is None, "farms": list(farm_ids or [])},
        )
        names = (
            "id",
            "name",
            "farm_id",
            "coop_id",
            "coop",
            "online",
            "last_seen_at",
            "revoked_at",
            "created_at",
            "schedule",
        )
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def device_farm(connection: Connection, device_id: str) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.farm_id FROM devices d JOIN coops c ON c.id = d.coop_id"
            " WHERE d.id = %s",
            (device_id,),
        )
        row = cursor.fetchone()
    return None if row is None else int(row[0])


# Users


def viewer_for_token(
    connection: Connection, token: str
) -> tuple[int, str, dict[str, str]] | None:
    """``(user_id, name, {farm id: role})`` of the token's user, or None."""
    user = user_for_token(connection, token)
    if user is None:
        return None
    memberships = farms_of_user(connection, user.id)
    return user.id, user.name, {str(m.farm_id): m.role for m in memberships}


def ensure_local_admin(connection: Connection, name: str) -> tuple[int, str]:
    """``(user_id, token)`` of the local operator, with a fresh token each call.

    The user belongs to no farm: the hub of ``farmeye up`` is told to let it
    see every farm, and other hubs give it nothing.
    """
    token = new_token()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO users (name, token_hash) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE"
            "   SET token_hash = EXCLUDED.token_hash, revoked_at = NULL"
            " RETURNING id",
            (name, token_hash(token)),
        )
        (user_id,) = cursor.fetchone() or (None,)
    return int(user_id), token


# Captures


def insert_captures(
    connection: Connection, drafts: Sequence[CaptureDraft]
) -> list[CaptureRow]:
    """Insert the drafts' rows, idempotently by (device, sha256), in one go.

    Returns one row per draft, in order; ``duplicate`` is True for a draft
    whose photo already had a row (a retried upload).
    """
    with connection.cursor() as cursor:
        inserted = execute_values(
            cursor,
            "INSERT INTO captures (device_id, coop_id, farm_id, sha256, size_bytes,"
            " content_type, captured_at, storage_key) VALUES %s"
            " ON CONFLICT (device_id, sha256) DO NOTHING"
            " RETURNING device_id, sha256, id, captured_at",
            [_draft_values(draft) for draft in drafts],
            fetch=True,
        )
        fresh = {(d, s): (i, t) for d, s, i, t in inserted}
        existing = _existing_rows(
            cursor, [d for d in drafts if (d.device_id, d.sha256) not in fresh]
        )
        cursor.execute(
            "UPDATE devices SET last_seen_at = now() WHERE id = ANY(%s)",
            (sorted({draft.device_id for draft in drafts}),),
        )
    return _rows_in_order(drafts, fresh, existing)


def _draft_values(draft: CaptureDraft) -> tuple[Any, ...]:
    return (
        draft.device_id,
        draft.coop_id,
        draft.farm_id,
        draft.sha256,
        draft.size_bytes,
        draft.content_type,
        draft.captured_at,
        draft.storage_key,
    )


def _existing_rows(
    cursor: Any, drafts: Sequence[CaptureDraft]
) -> dict[tuple[str, str], tuple[int, datetime]]:
    if not drafts:
        return {}
    keys = [(draft.device_id, draft.sha256) for draft in drafts]
    rows = execute_values(
        cursor,
        "SELECT c.device_id, c.sha256, c.id, c.captured_at FROM captures c"
        " JOIN (VALUES %s) AS k(device_id, sha256)"
        "   ON c.device_id = k.device_id AND c.sha256 = k.sha256",
        keys,
        fetch=True,
    )
    return {(d, s): (i, t) for d, s, i, t in rows}


def _rows_in_order(
    drafts: Sequence[CaptureDraft],
    fresh: Mapping[tuple[str, str], tuple[int, datetime]],
    existing: Mapping[tuple[str, str], tuple[int, datetime]],
) -> list[CaptureRow]:
    rows = []
    claimed: set[tuple[str, str]] = set()
    for draft in drafts:
        key = (draft.device_id, draft.sha256)
        # The same photo twice in one batch: the first is new, the second not.
        if key in fresh and key not in claimed:
            claimed.add(key)
            capture_id, captured_at = fresh[key]
            rows.append(CaptureRow(capture_id, False, captured_at))
        else:
            capture_id, captured_at = fresh.get(key) or existing[key]
            rows.append(CaptureRow(capture_id, True, captured_at))
    return rows


@dataclass(frozen=True)
class TriageRow:
    capture_id: int
    label: str
    scores: Mapping[str, float]
    model_version: str
    latency_ms: float


def save_triages(connection: Connection, rows: Sequence[TriageRow]) -> list[None]:
    """Store triage verdicts; one lost in a crash costs only its display."""
    with connection.cursor() as cursor:
        _skip_fsync(cursor)
        execute_values(
            cursor,
            "INSERT INTO triage_results"
            " (capture_id, label, scores, model_version, latency_ms)"
            " VALUES %s ON CONFLICT (capture_id) DO NOTHING",
            [_triage_values(row) for row in rows],
        )
    return [None] * len(rows)


def _triage_values(row: TriageRow) -> tuple[Any, ...]:
    return (
        row.capture_id,
        row.label,
        Json(dict(row.scores)),
        row.model_version,
        row.latency_ms,
    )


def mark_queued(connection: Connection, capture_ids: Sequence[int]) -> list[None]:
    """The captures' analysis tasks are in the queue.

    Not waited for on disk: if the mark is lost in a crash the capture is
    sent again, and the worker's result is keyed by capture and model.
    """
    with connection.cursor() as cursor:
        _skip_fsync(cursor)
        cursor.execute(
            "UPDATE captures SET dispatch_state = 'queued'"
            " WHERE id = ANY(%s) AND dispatch_state = 'pending'",
            (list(capture_ids),),
        )
    return [None] * len(capture_ids)


def _skip_fsync(cursor: Any) -> None:
    """Commit this transaction without waiting for the WAL flush."""
    cursor.execute("SET LOCAL synchronous_commit = off")


def mark_dispatch_failed(connection: Connection, capture_id: int) -> None:
    """The capture can never be analysed (its photo is gone)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE captures SET dispatch_state = 'failed' WHERE id = %s",
            (capture_id,),
        )


@dataclass(frozen=True)
class RetryOutcome:
    """What :func:`retry_failed_captures` did with the captures it was given."""

    retried: dict[int, str | None]
    """Capture id -> the error of the failed analysis it had, if any."""
    refused: dict[int, str]
    """Capture id -> why it was left alone."""


_RETRY_SQL = """
WITH target AS (
    SELECT id FROM captures
     WHERE dispatch_state = 'failed' AND photo_deleted_at IS NULL
       AND (%(every)s OR id = ANY(%(ids)s))
       FOR UPDATE
), cleared AS (
    DELETE FROM analyses a USING target t
     WHERE a.capture_id = t.id AND a.status = 'failed'
 RETURNING a.capture_id, a.error
), moved AS (
    UPDATE captures c SET dispatch_state = 'pending', dispatch_claimed_until = NULL
      FROM target t WHERE c.id = t.id
 RETURNING c.id
)
SELECT m.id, (SELECT string_agg(x.error, '; ') FROM cleared x
               WHERE x.capture_id = m.id)
  FROM moved m ORDER BY m.id
"""


def retry_failed_captures(
    connection: Connection, capture_ids: Sequence[int] | None
) -> RetryOutcome:
    """Send failed captures back to pending, for the hubs to queue again.

    Their failed analyses are deleted (an analysis is unique per capture and
    model version, so the old row would keep the new one out). ``None``
    retries every failed capture whose photo is still on the hub.
    """
    ids = sorted(set(capture_ids or ()))
    with connection.cursor() as cursor:
        cursor.execute(_RETRY_SQL, {"every": capture_ids is None, "ids": ids})
        retried = {int(row[0]): row[1] for row in cursor.fetchall()}
        left = [capture_id for capture_id in ids if capture_id not in retried]
        cursor.execute(
            "SELECT id, dispatch_state, photo_deleted_at FROM captures"
            " WHERE id = ANY(%s)",
            (left,),
        )
        found = {int(row[0]): row[1:] for row in cursor.fetchall()}
    refused = {
        capture_id: _not_retried(*found[capture_id])
        if capture_id in found
        else "no such capture"
        for capture_id in left
    }
    return RetryOutcome(retried, refused)


def _not_retried(state: str, photo_deleted_at: datetime | None) -> str:
    if photo_deleted_at is not None:
        return f"its photo was deleted on {photo_deleted_at:%Y-%m-%d} (retention)"
    if state == "done":
        return "its analysis is done"
    return "it is waiting for its analysis already"


def claim_pending_captures(
    connection: Connection, older_than_s: float, limit: int, lease_s: float
) -> list[PendingCapture]:
    """Claim captures still waiting for dispatch, oldest first, for ``lease_s``.

    Rows that another hub holds (locked now, or claimed and not yet run
    out) are skipped, so hubs sharing the database send each capture once.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE captures c"
            "   SET dispatch_claimed_until = now() + make_interval(secs => %s)"
            "  FROM (SELECT id FROM captures"
            "         WHERE dispatch_state = 'pending'"
            "           AND received_at < now() - make_interval(secs => %s)"
            "           AND (dispatch_claimed_until IS NULL"
            "                OR dispatch_claimed_until < now())"
            "         ORDER BY id LIMIT %s"
            "         FOR UPDATE SKIP LOCKED) picked"
            " WHERE c.id = picked.id"
            " RETURNING c.id, c.storage_key,"
            "   (SELECT t.label FROM triage_results t WHERE t.capture_id = c.id)",
            (lease_s, older_than_s, limit),
        )
        return [PendingCapture(*row) for row in sorted(cursor.fetchall())]


def release_claims(connection: Connection, capture_ids: Sequence[int]) -> None:
    """Give back claimed captures that were not sent, for the next round."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE captures SET dispatch_claimed_until = NULL WHERE id = ANY(%s)",
            (list(capture_ids),),
        )


_CAPTURE_SELECT = """
SELECT c.id, c.device_id, c.farm_id, c.coop_id, c.sha256, c.size_bytes,
       c.content_type, c.captured_at, c.received_at, c.dispatch_state,
       t.label, t.scores, t.model_version, t.latency_ms,
       a.status, a.label, a.scores, a.model_version, a.error,
       a.heatmap_png IS NOT NULL OR a.heatmap_map IS NOT NULL, a.created_at
  FROM captures c
  LEFT JOIN triage_results t ON t.capture_id = c.id
  LEFT JOIN LATERAL (
       SELECT * FROM analyses x WHERE x.capture_id = c.id
        ORDER BY x.created_at DESC, x.id DESC LIMIT 1) a ON true
"""


@dataclass(frozen=True)
class CaptureQuery:
    """Filters and page of ``GET /api/captures``."""

    farm_ids: Sequence[int] | None
    farm_id: int | None = None
    coop_id: int | None = None
    device_id: str | None = None
    label: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    after: tuple[datetime, int] | None = None


def list_captures(connection: Connection, query: CaptureQuery) -> list[dict[str, Any]]:
    """Captures matching ``query``, newest first, at most ``limit + 1``."""
    after_time, after_id = query.after or (None, None)
    with connection.cursor() as cursor:
        cursor.execute(
            _CAPTURE_SELECT + " WHERE (%(all)s OR c.farm_id = ANY(%(farms)s))"
            "   AND (%(farm)s::bigint IS NULL OR c.farm_id = %(farm)s)"
            "   AND (%(coop)s::bigint IS NULL OR c.coop_id = %(coop)s)"
            "   AND (%(device)s::text IS NULL OR c.device_id = %(device)s)"
            "   AND (%(label)s::text IS NULL OR coalesce(a.label, t.label) = %(label)s)"
            "   AND (%(since)s::timestamptz IS NULL OR c.captured_at >= %(since)s)"
            "   AND (%(until)s::timestamptz IS NULL OR c.captured_at < %(until)s)"
            "   AND (%(after_t)s::timestamptz IS NULL"
            "        OR (c.captured_at, c.id) < (%(after_t)s, %(after_id)s))"
            " ORDER BY c.captured_at DESC, c.id DESC LIMIT %(limit)s",
            {
                "all": query.farm_ids is None,
                "farms": list(query.farm_ids or []),
                "farm": query.farm_id,
                "coop": query.coop_id,
                "device": query.device_id,
                "label": query.label,
                "since": query.since,
                "until": query.until,
                "after_t": after_time,
                "after_id": after_id,
                "limit": query.limit + 1,
            },
        )
        return [_capture_document(row) for row in cursor.fetchall()]


def get_capture(connection: Connection, capture_id: int) -> dict[str, Any] | None:
    with connection.cursor() as cursor:
        cursor.execute(_CAPTURE_SELECT + " WHERE c.id = %s", (capture_id,))
        row = cursor.fetchone()
    return None if row is None else _capture_document(row)


def _capture_document(row: Sequence[Any]) -> dict[str, Any]:
    (
        capture_id,
        device_id,
        farm_id,
        coop_id,
        sha256,
        size_bytes,
        content_type,
        captured_at,
        received_at,
        dispatch_state,
        t_label,
        t_scores,
        t_version,
        t_latency_ms,
        a_status,
        a_label,
        a_scores,
        a_version,
        a_error,
        a_heatmap,
        a_created_at,
    ) = row
    triage = None
    if t_label is not None:
        triage = {
            "label": t_label,
            "scores": t_scores,
            "model_version": t_version,
            "latency_ms": t_latency_ms,
        }
    analysis = None
    if a_status is not None:
        analysis = {
            "status": a_status,
            "label": a_label,
            "scores": a_scores,
            "model_version": a_version,
            "error": a_error,
            "has_heatmap": a_heatmap,
            "created_at": a_created_at,
        }
    return {
        "id": capture_id,
        "device_id": device_id,
        "farm_id": farm_id,
        "coop_id": coop_id,
        "sha256": sha256,
        "size_bytes": size_bytes,
        "content_type": content_type,
        "captured_at": captured_at,
        "received_at": received_at,
        "dispatch_state": dispatch_state,
        "triage": triage,
        "analysis": analysis,
    }


@dataclass(frozen=True)
class CaptureFile:
    farm_id: int
    storage_key: str
    content_type: str
    photo_deleted_at: datetime | None


def capture_file(connection: Connection, capture_id: int) -> CaptureFile | None:
    """Where a capture's photo is, and whether retention has deleted it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT farm_id, storage_key, content_type, photo_deleted_at"
            "  FROM captures WHERE id = %s",
            (capture_id,),
        )
        row = cursor.fetchone()
    return None if row is None else CaptureFile(int(row[0]), *row[1:])


_EXPIRED_SQL = """
WITH cutoff AS (SELECT now() - make_interval(days => 1) * %(days)s AS t)
SELECT c.id, c.storage_key FROM captures c, cutoff
 WHERE c.photo_deleted_at IS NULL
   AND c.received_at < cutoff.t
   AND c.dispatch_state IN ('done', 'failed')
   AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.capture_id = c.id)
   AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.capture_id = c.id)
   AND NOT EXISTS (
       SELECT 1 FROM captures o
        WHERE o.storage_key = c.storage_key AND o.id <> c.id
          AND o.photo_deleted_at IS NULL
          AND (o.received_at >= cutoff.t
               OR o.dispatch_state NOT IN ('done', 'failed')
               OR EXISTS (SELECT 1 FROM feedback f WHERE f.capture_id = o.id)
               OR EXISTS (SELECT 1 FROM alerts a WHERE a.capture_id = o.id)))
 ORDER BY c.received_at LIMIT %(limit)s
"""


def expired_photos(
    connection: Connection, older_than_days: float, limit: int
) -> list[tuple[int, str]]:
    """``(capture_id, storage_key)`` of photos retention may delete, oldest first.

    A photo goes once it is older than ``older_than_days`` and its analysis
    is settled (``done`` or ``failed``), unless a user gave feedback on it or
    an alert names it, and only when no capture that keeps the same file
    (younger, unsettled, with feedback or an alert) shares it.
    """
    with connection.cursor() as cursor:
        cursor.execute(_EXPIRED_SQL, {"days": older_than_days, "limit": limit})
        return [(int(row[0]), str(row[1])) for row in cursor.fetchall()]


def mark_photos_deleted(connection: Connection, capture_ids: Sequence[int]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE captures SET photo_deleted_at = now() WHERE id = ANY(%s)",
            (list(capture_ids),),
        )


def heatmap(
    connection: Connection, capture_id: int
) -> tuple[bytes | None, bytes | None] | None:
    """``(painted PNG, evidence map)`` of the newest analysis that has either.

    Analyses stored before workers kept only the map have the PNG; newer ones
    have the map, which the hub paints over the photo itself.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT heatmap_png, heatmap_map FROM analyses"
            " WHERE capture_id = %s"
            "   AND (heatmap_png IS NOT NULL OR heatmap_map IS NOT NULL)"
            " ORDER BY created_at DESC, id DESC LIMIT 1",
            (capture_id,),
        )
        row = cursor.fetchone()
    if row is None:
        return None
    png, evidence = row
    return (
        bytes(png) if png is not None else None,
        bytes(evidence) if evidence is not None else None,
    )


def add_feedback(
    connection: Connection,
    capture_id: int,
    user_id: int | None,
    label: str,
    note: str | None,
) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO feedback (capture_id, user_id, label, note)"
            " VALUES (%s, %s, %s, %s) RETURNING id, created_at",
            (capture_id, user_id, label, note),
        )
        feedback_id, created_at = cursor.fetchone() or (None, None)
    return {
        "id": feedback_id,
        "capture_id": capture_id,
        "label": label,
        "note": note,
        "created_at": created_at,
    }


# Replay of the event stream


@dataclass(frozen=True)
class ReplayQuery:
    """Which past events a reconnecting stream client asks for."""

    farm_ids: list[int] | None
    """The viewer's farms; None for every farm."""
    since: datetime
    limit: int
    farm_id: int | None = None
    coop_id: int | None = None
    device_id: str | None = None


_REPLAY_FILTER = """
   AND (%(farms)s::bigint[] IS NULL OR c.farm_id = ANY(%(farms)s))
   AND (%(farm)s::bigint IS NULL OR c.farm_id = %(farm)s)
   AND (%(coop)s::bigint IS NULL OR c.coop_id = %(coop)s)
   AND (%(device)s::text IS NULL OR c.device_id = %(device)s)
"""

_REPLAY_CAPTURES_SQL = (
    """
SELECT c.id, c.farm_id, c.coop_id, c.device_id, c.captured_at, c.received_at,
       t.label, t.scores, t.model_version, t.latency_ms, t.created_at
  FROM captures c LEFT JOIN triage_results t ON t.capture_id = c.id
 WHERE c.received_at >= %(since)s"""
    + _REPLAY_FILTER
    + " ORDER BY c.received_at DESC, c.id DESC LIMIT %(limit)s"
)

_REPLAY_ANALYSES_SQL = (
    """
SELECT a.capture_id, c.farm_id, c.coop_id, c.device_id, a.model_version,
       a.status, a.label, a.scores, a.error,
       a.heatmap_png IS NOT NULL OR a.heatmap_map IS NOT NULL, a.created_at
  FROM analyses a JOIN captures c ON c.id = a.capture_id
 WHERE a.created_at >= %(since)s"""
    + _REPLAY_FILTER
    + " ORDER BY a.created_at DESC, a.id DESC LIMIT %(limit)s"
)

_REPLAY_ALERTS_SQL = """
SELECT a.id, a.farm_id, a.coop_id, a.capture_id, a.label, a.level, a.message,
       a.created_at
  FROM alerts a
 WHERE a.created_at >= %(since)s
   AND %(device)s::text IS NULL
   AND (%(farms)s::bigint[] IS NULL OR a.farm_id = ANY(%(farms)s))
   AND (%(farm)s::bigint IS NULL OR a.farm_id = %(farm)s)
   AND (%(coop)s::bigint IS NULL OR a.coop_id = %(coop)s)
 ORDER BY a.created_at DESC, a.id DESC LIMIT %(limit)s
"""


def replay_events(connection: Connection, query: ReplayQuery) -> list[dict[str, Any]]:
    """The capture, triage, analysis and alert events since ``query.since``,
    rebuilt from their rows, oldest first: the newest ``query.limit`` of them.

    Each carries ``replay: true`` and the time its row was written. Device
    events (online, offline) are not kept and so not replayed.
    """
    params = {
        "since": query.since,
        "limit": query.limit,
        "farms": query.farm_ids,
        "farm": query.farm_id,
        "coop": query.coop_id,
        "device": query.device_id,
    }
    rows: list[tuple[datetime, Callable[..., dict[str, Any]], tuple[Any, ...]]] = []
    with connection.cursor() as cursor:
        cursor.execute(_REPLAY_CAPTURES_SQL, params)
        for row in cursor.fetchall():
            rows.append((row[5], _capture_event, row))
            if row[6] is not None:
                rows.append((row[10], _triage_event, row))
        cursor.execute(_REPLAY_ANALYSES_SQL, params)
        rows.extend((row[-1], _analysis_event, row) for row in cursor.fetchall())
        cursor.execute(_REPLAY_ALERTS_SQL, params)
        rows.extend((row[-1], _alert_event, row) for row in cursor.fetchall())
    rows.sort(key=lambda item: item[0])
    return [build(row) for _, build, row in rows[-query.limit :]]


# The rows were written from events checked when they were made: rebuilding
# them skips the schema check, which for a thousand events would hold the
# GIL, and so the event loop, for over a second.


def _capture_ids(row: tuple[Any, ...]) -> dict[str, Any]:
    capture_id, farm_id, coop_id, device_id = row[:4]
    return {
        "farm_id": farm_id,
        "coop_id": coop_id,
        "device_id": device_id,
        "capture_id": capture_id,
        "replay": True,
        "validate": False,
    }


def _capture_event(row: tuple[Any, ...]) -> dict[str, Any]:
    captured_at, received_at = row[4:6]
    return make_event(
        "capture",
        **_capture_ids(row),
        time=received_at.astimezone(UTC),
        captured_at=captured_at.isoformat(),
    )


def _triage_event(row: tuple[Any, ...]) -> dict[str, Any]:
    label, scores, model_version, latency_ms, triaged_at = row[6:]
    return make_event(
        "triage",
        **_capture_ids(row),
        time=triaged_at.astimezone(UTC),
        label=label,
        scores=scores,
        model_version=model_version,
        latency_ms=latency_ms,
    )


def _analysis_event(row: tuple[Any, ...]) -> dict[str, Any]:
    model_version, status, label, scores, error, heatmap, created_at = row[4:]
    return make_event(
        "analysis",
        **_capture_ids(row),
        label=label,
        scores=scores,
        model_version=model_version,
        time=created_at.astimezone(UTC),
        status=status,
        heatmap=bool(heatmap),
        error=error,
    )


def _alert_event(row: tuple[Any, ...]) -> dict[str, Any]:
    alert_id, farm_id, coop_id, capture_id, label, level, message, created_at = row
    return make_event(
        "alert",
        farm_id=farm_id,
        coop_id=coop_id,
        capture_id=capture_id,
        label=label,
        time=created_at.astimezone(UTC),
        alert_id=alert_id,
        message=message,
        level=level,
        replay=True,
        validate=False,
    )


# Alerts


def recent_analysis_labels(
    connection: Connection, coop_id: int, window_s: float, limit: int
) -> list[str]:
    """Labels of the coop's newest finished analyses in the window, newest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.label FROM analyses a JOIN captures c ON c.id = a.capture_id"
            " WHERE c.coop_id = %s AND a.status = 'done'"
            "   AND c.captured_at > now() - make_interval(secs => %s)"
            " ORDER BY c.captured_at DESC, c.id DESC LIMIT %s",
            (coop_id, window_s, limit),
        )
        return [label for (label,) in cursor.fetchall()]


def lock_coop_label(connection: Connection, coop_id: int, label: str) -> None:
    """Serialize alert decisions for one coop and label until commit."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"farmeye-alert:{coop_id}:{label}",),
        )


def seconds_since_alert(
    connection: Connection, coop_id: int, label: str
) -> float | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM now() - max(created_at)) FROM alerts"
            " WHERE coop_id = %s AND label = %s",
            (coop_id, label),
        )
        row = cursor.fetchone()
    return None if row is None or row[0] is None else float(row[0])


def insert_alert(
    connection: Connection,
    farm_id: int,
    coop_id: int,
    capture_id: int | None,
    label: str,
    message: str,
) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO alerts (farm_id, coop_id, capture_id, label, level, message)"
            " VALUES (%s, %s, %s, %s, 'warning', %s) RETURNING id, created_at",
            (farm_id, coop_id, capture_id, label, message),
        )
        alert_id, created_at = cursor.fetchone() or (None, None)
    return {
        "id": alert_id,
        "farm_id": farm_id,
        "coop_id": coop_id,
        "capture_id": capture_id,
        "label": label,
        "level": "warning",
        "message": message,
        "created_at": created_at,
    }


def list_alerts(
    connection: Connection,
    farm_ids: Sequence[int] | None,
    coop_id: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, farm_id, coop_id, capture_id, label, level, message,"
            "       created_at, acknowledged_at FROM alerts"
            " WHERE (%(all)s OR farm_id = ANY(%(farms)s))"
            "   AND (%(coop)s::bigint IS NULL OR coop_id = %(coop)s)"
            " ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
            {
                "all": farm_ids is None,
                "farms": list(farm_ids or []),
                "coop": coop_id,
                "limit": limit,
            },
        )
        names = (
            "id",
            "farm_id",
            "coop_id",
            "capture_id",
            "label",
            "level",
            "message",
            "created_at",
            "acknowledged_at",
        )
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# Paging


def encode_cursor(captured_at: datetime, capture_id: int) -> str:
    """An opaque page cursor: where the next page starts."""
    raw = json.dumps([captured_at.isoformat(), capture_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The position of a cursor from :func:`encode_cursor`, or ValueError."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        text, capture_id = json.loads(raw)
        return datetime.fromisoformat(text), int(capture_id)
    except (ValueError, TypeError, binascii.Error):
        raise ValueError(
            "cursor is not one this API gave out; use next_cursor as is"
        ) from None
