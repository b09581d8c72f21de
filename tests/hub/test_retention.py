"""Photo retention: old, settled photos leave the disk; their rows stay."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from hub.store import DiskImageStore
from tests.hub.support import (
    add_camera,
    add_user,
    client_for,
    http_get,
    hub_settings,
    photo,
    running_hub,
    sql,
)


def age(db_url: str, capture_id: int, days: int, state: str) -> None:
    sql(
        db_url,
        "UPDATE captures SET received_at = now() - make_interval(days => %s),"
        " dispatch_state = %s WHERE id = %s",
        days,
        state,
        capture_id,
    )


def keep_evidence(db_url: str, farm_id: int, ids: dict[str, int], copy: int) -> None:
    """Feedback on one photo, an alert naming another, and one on a second
    capture (``copy``) of the ``evidence`` photo."""
    feedback = "INSERT INTO feedback (capture_id, label) VALUES (%s, 'healthy')"
    sql(db_url, feedback, ids["feedback"])
    alert = (
        "INSERT INTO alerts (farm_id, capture_id, label, level, message)"
        " VALUES (%s, %s, 'coccidiosis', 'warning', 'three sick photos')"
    )
    sql(db_url, alert, farm_id, ids["alerted"])
    sql(db_url, alert, farm_id, copy)


def test_old_settled_photos_are_deleted_and_answer_410(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """Only a photo past its time, analysed, and needed by no other capture
    goes; its row stays, its image answers 410, and a second round is idle.
    Photos with feedback (training data) or named by an alert (its evidence)
    stay, and so does a file one of them shares."""
    camera, other = add_camera(db_url), add_camera(db_url)
    token = add_user(db_url, "ann", "farm-a")
    names = ["old", "pending", "new", "shared", "feedback", "alerted", "evidence"]
    photos = {name: photo(seed) for seed, name in enumerate(names)}
    settings = hub_settings(tmp_path, photo_retention_days=30)

    async def scenario() -> tuple[list[int], dict[str, int], int, int]:
        async with running_hub(settings, db_url, redis_db_url) as hub:
            ids = {}
            async with client_for(hub, camera) as client:
                for name, data in photos.items():
                    ids[name] = (await client.upload(data)).capture_id
            async with client_for(hub, other) as client:
                await client.upload(photos["shared"])  # a recent capture of it
                copy = (await client.upload(photos["evidence"])).capture_id
            age(db_url, ids["old"], 40, "done")
            age(db_url, ids["pending"], 40, "pending")
            age(db_url, ids["new"], 2, "done")
            age(db_url, ids["shared"], 40, "failed")
            for name in ("feedback", "alerted", "evidence"):
                age(db_url, ids[name], 40, "done")
            age(db_url, copy, 40, "done")
            keep_evidence(db_url, camera.farm_id, ids, copy)
            base = f"/api/captures/{ids['old']}"
            before = (await http_get(hub, f"{base}/thumbnail", token))[0]
            first = await hub.retention.run_once()
            second = await hub.retention.run_once()
            statuses = [
                (await http_get(hub, f"{base}/{kind}", token))[0]
                for kind in ("image", "thumbnail")
            ]
            _, _, body = await http_get(hub, base, token)
            metrics = (await http_get(hub, "/metrics"))[2].decode()
        assert json.loads(body)["id"] == ids["old"]
        assert "farmeye_hub_photos_deleted_total 1.0" in metrics
        assert "farmeye_hub_disk_free_bytes " in metrics
        return [before, *statuses], ids, first, second

    statuses, ids, first, second = asyncio.run(scenario())
    assert statuses == [200, 410, 410]
    assert (first, second) == (1, 0)
    store = DiskImageStore(tmp_path)
    kept = {
        name
        for name, data in photos.items()
        if store.exists(hashlib.sha256(data).hexdigest())
    }
    assert kept == {"pending", "new", "shared", "feedback", "alerted", "evidence"}
    assert not list(store.thumbnails_dir.rglob("*.jpg"))
    deleted = sql(db_url, "SELECT id FROM captures WHERE photo_deleted_at IS NOT NULL")
    assert deleted == [(ids["old"],)]
