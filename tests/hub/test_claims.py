"""Hubs sharing a database claim pending captures before re-sending them."""

from __future__ import annotations

import hashlib

from farmeye import db
from hub import repository
from tests.hub.support import add_camera, sql


def pending_rows(db_url: str, count: int) -> list[int]:
    """``count`` captures left pending a minute ago, as after a Redis outage."""
    camera = add_camera(db_url)
    ids = []
    for index in range(count):
        sha = hashlib.sha256(f"{camera.device_id}-{index}".encode()).hexdigest()
        ((capture_id,),) = sql(
            db_url,
            "INSERT INTO captures (device_id, coop_id, farm_id, sha256, size_bytes,"
            " content_type, captured_at, received_at, storage_key)"
            " VALUES (%s, %s, %s, %s, 1, 'image/jpeg', now(),"
            " now() - interval '1 minute', %s) RETURNING id",
            camera.device_id,
            camera.coop_id,
            camera.farm_id,
            sha,
            sha,
        )
        ids.append(capture_id)
    return ids


def claim(connection: db.Connection, limit: int, lease_s: float = 60.0) -> list[int]:
    found = repository.claim_pending_captures(connection, 15.0, limit, lease_s)
    return [capture.capture_id for capture in found]


def test_two_hubs_claim_disjoint_captures_while_both_hold_them(db_url: str) -> None:
    """A second hub skips the rows the first has locked, without waiting."""
    ids = pending_rows(db_url, 5)
    first, second = db.connect(db_url), db.connect(db_url)
    try:
        first_claim = claim(first, 3)  # its transaction is still open
        second_claim = claim(second, 5)
        first.commit()
        second.commit()
        third = claim(second, 5)
        second.commit()
    finally:
        first.close()
        second.close()

    assert first_claim == ids[:3]
    assert second_claim == ids[3:]
    assert third == []


def test_released_or_expired_claims_are_claimed_again(db_url: str) -> None:
    """Unsent captures go back at once, a dead hub's claims after their lease,
    and captures sent meanwhile are not claimed at all."""
    ids = pending_rows(db_url, 4)
    expire = "UPDATE captures SET dispatch_claimed_until = now() - interval '1 s'"
    send_first = "UPDATE captures SET dispatch_state = 'queued' WHERE id = %s"
    connection = db.connect(db_url)
    try:
        with connection:
            taken = claim(connection, 2)
            repository.release_claims(connection, taken[1:])
        with connection:
            again = claim(connection, 4)
        with connection:
            while_held = claim(connection, 4)
        sql(db_url, expire)
        sql(db_url, send_first, ids[0])
        with connection:
            after_lease = claim(connection, 4)
    finally:
        connection.close()

    assert taken == ids[:2]
    assert again == ids[1:]
    assert while_held == []
    assert after_lease == ids[1:]
