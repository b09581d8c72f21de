"""The HTTP face: dashboard, OpenAPI, health, metrics, REST history with
paging and farm isolation, photos, feedback, commands and the event stream."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus

from farmeye.heatmaps import encode_map
from tests.hub.support import (
    add_camera,
    add_user,
    client_for,
    event_stream,
    http_get,
    hub_settings,
    next_event,
    photo,
    running_hub,
    sql,
)


def test_dashboard_openapi_health_and_metrics_are_served(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """/, its script, /openapi.json, /healthz and /metrics answer without a token."""

    async def scenario() -> dict[str, tuple[int, dict[str, str], bytes]]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            paths = ["/", "/static/app.js", "/openapi.json", "/healthz", "/metrics"]
            return {path: await http_get(hub, path) for path in paths}

    answers = asyncio.run(scenario())
    assert all(status == 200 for status, _, _ in answers.values())
    assert b"FarmEye" in answers["/"][2]
    assert answers["/"][1]["Content-Type"].startswith("text/html")
    assert json.loads(answers["/openapi.json"][2])["openapi"].startswith("3.1")
    assert json.loads(answers["/healthz"][2])["checks"]["database"] == "ok"
    assert b"farmeye_hub_uploads" in answers["/metrics"][2]


def test_api_refuses_missing_and_unknown_tokens(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """/api routes answer 401 with a hint without a valid token."""

    async def scenario() -> list[tuple[int, dict[str, str], bytes]]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            unknown = "fet_" + "0" * 43
            return [
                await http_get(hub, "/api/captures"),
                await http_get(hub, "/api/captures", unknown),
            ]

    for status, _, body in asyncio.run(scenario()):
        assert status == 401
        assert "farmeye users add" in json.loads(body)["message"]


def test_capture_history_pages_with_cursor_and_filters(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """Pages follow next_cursor, newest first, with no capture twice; filters apply."""
    camera, other = add_camera(db_url), add_camera(db_url, coop="coop-2")
    token = add_user(db_url, "ann", "farm-a")

    async def scenario() -> tuple[list[list[int]], dict[str, Any], list[int]]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with client_for(hub, camera) as client:
                ids = [(await client.upload(photo(i))).capture_id for i in range(5)]
            async with client_for(hub, other) as client:
                await client.upload(photo(99))
            pages, cursor = [], ""
            while True:
                path = f"/api/captures?device={camera.device_id}&limit=2{cursor}"
                page = json.loads((await http_get(hub, path, token))[2])
                pages.append([capture["id"] for capture in page["captures"]])
                if page["next_cursor"] is None:
                    break
                cursor = f"&cursor={page['next_cursor']}"
            path = f"/api/captures?coop={other.coop_id}"
            by_coop = json.loads((await http_get(hub, path, token))[2])
            too_far = await http_get(hub, "/api/captures?since=99999999999d", token)
            assert too_far[0] == 400, too_far
            return pages, by_coop, ids

    pages, by_coop, ids = asyncio.run(scenario())
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [i for page in pages for i in page] == sorted(ids, reverse=True)
    assert [c["coop_id"] for c in by_coop["captures"]] == [other.coop_id]


def test_user_sees_only_the_farms_they_belong_to(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """Another farm's captures are absent from listings and answer 404."""
    mine, theirs = add_camera(db_url, farm="farm-a"), add_camera(db_url, farm="farm-b")
    token = add_user(db_url, "ann", "farm-a")

    async def scenario() -> tuple[list[int], list[int], int, int]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with client_for(hub, mine) as client:
                my_id = (await client.upload(photo(1))).capture_id
            async with client_for(hub, theirs) as client:
                their_id = (await client.upload(photo(2))).capture_id
            listing = json.loads((await http_get(hub, "/api/captures", token))[2])
            devices = json.loads((await http_get(hub, "/api/devices", token))[2])
            detail = await http_get(hub, f"/api/captures/{their_id}", token)
            image = await http_get(hub, f"/api/captures/{their_id}/image", token)
            listed = [c["id"] for c in listing["captures"]]
            assert listed == [my_id]
            farms = [d["farm_id"] for d in devices["devices"]]
            return listed, farms, detail[0], image[0]

    listed, device_farms, detail_status, image_status = asyncio.run(scenario())
    assert len(listed) == 1
    assert device_farms == [mine.farm_id]
    assert (detail_status, image_status) == (404, 404)


def test_event_stream_is_filtered_by_membership_and_query(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """Each user's stream carries only their farm's events, narrowed by ?coop=."""
    cam_a1 = add_camera(db_url, farm="farm-a", coop="c1")
    cam_a2 = add_camera(db_url, farm="farm-a", coop="c2")
    cam_b = add_camera(db_url, farm="farm-b", coop="c1")
    ann, bob = add_user(db_url, "ann", "farm-a"), add_user(db_url, "bob", "farm-b")

    async def scenario() -> list[set[tuple[int, int]]]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with (
                event_stream(hub, ann) as ann_all,
                event_stream(hub, ann, f"&coop={cam_a2.coop_id}") as ann_c2,
                event_stream(hub, bob) as bob_all,
            ):
                for seed, camera in enumerate([cam_a1, cam_a2, cam_b]):
                    async with client_for(hub, camera) as client:
                        await client.upload(photo(seed))
                # cam_b uploads last: once its triage arrived, all events are out.
                bob_first = await next_event(
                    bob_all, "triage", device_id=cam_b.device_id
                )
                seen = [await drain(stream) for stream in (ann_all, ann_c2, bob_all)]
                seen[2].add((bob_first["farm_id"], bob_first["coop_id"]))
                return seen

    ann_all, ann_c2, bob_all = asyncio.run(scenario())
    assert ann_all == {
        (cam_a1.farm_id, cam_a1.coop_id),
        (cam_a2.farm_id, cam_a2.coop_id),
    }
    assert ann_c2 == {(cam_a2.farm_id, cam_a2.coop_id)}
    assert bob_all == {(cam_b.farm_id, cam_b.coop_id)}


async def drain(stream: Any) -> set[tuple[int, int]]:
    """(farm id, coop id) of every event still queued on ``stream``."""
    seen: set[tuple[int, int]] = set()
    while True:
        try:
            event = json.loads(await asyncio.wait_for(stream.recv(), 0.5))
        except TimeoutError:
            return seen
        seen.add((event["farm_id"], event["coop_id"]))


def test_event_stream_refuses_unknown_token(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """Opening /ws/events with a bad token fails the handshake with 401."""

    async def scenario() -> int:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            with pytest.raises(InvalidStatus) as refused:
                async with event_stream(hub, "fet_wrong"):
                    pass
            return refused.value.response.status_code

    assert asyncio.run(scenario()) == 401


def test_photo_thumbnail_heatmap_and_feedback(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """Image bytes come back as sent; feedback needs a manager and a known label."""
    camera = add_camera(db_url)
    manager = add_user(db_url, "ann", "farm-a", "manager")
    viewer = add_user(db_url, "vic", "farm-a", "viewer")
    data = photo(7)

    async def scenario() -> dict[str, tuple[int, dict[str, str], bytes]]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with client_for(hub, camera) as client:
                capture = (await client.upload(data)).capture_id
            base = f"/api/captures/{capture}"
            answers = {
                "image": await http_get(hub, f"{base}/image", manager),
                "thumbnail": await http_get(hub, f"{base}/thumbnail", manager),
                "no heatmap": await http_get(hub, f"{base}/heatmap", manager),
            }
            sql(
                db_url,
                "INSERT INTO analyses (capture_id, model_version, status,"
                " label, heatmap_png) VALUES (%s, 'm/full', 'done', 'healthy', %s)",
                capture,
                b"\x89PNG fake",
            )
            answers["heatmap"] = await http_get(hub, f"{base}/heatmap", manager)
            grid = np.zeros((7, 7), np.float32)
            grid[3, 3] = 1.0
            sql(
                db_url,
                "INSERT INTO analyses (capture_id, model_version, status,"
                " label, heatmap_map) VALUES (%s, 'n/full', 'done', 'newcastle', %s)",
                capture,
                encode_map(grid),
            )
            answers["painted"] = await http_get(hub, f"{base}/heatmap", manager)
            answers["painted again"] = await http_get(hub, f"{base}/heatmap", viewer)
            sql(
                db_url,
                "INSERT INTO analyses (capture_id, model_version, status,"
                " label, heatmap_map) VALUES (%s, 'o/full', 'done', 'newcastle', %s)",
                capture,
                b"garbage",
            )
            answers["broken map"] = await http_get(hub, f"{base}/heatmap", manager)
            feedback = f"{base}/feedback"
            answers["feedback"] = await http_get(
                hub,
                feedback,
                manager,
                "POST",
                {"label": "coccidiosis", "note": "blood"},
            )
            answers["viewer feedback"] = await http_get(
                hub, feedback, viewer, "POST", {"label": "healthy"}
            )
            answers["bad label"] = await http_get(
                hub, feedback, manager, "POST", {"label": "flu"}
            )
            return answers

    answers = asyncio.run(scenario())
    assert answers["image"][0] == 200 and answers["image"][2] == data
    assert answers["thumbnail"][2][:2] == b"\xff\xd8"
    assert answers["no heatmap"][0] == 404
    assert answers["heatmap"][2] == b"\x89PNG fake"
    status, headers, body = answers["painted"]
    content_type = {k.lower(): v for k, v in headers.items()}["content-type"]
    assert (status, content_type) == (200, "image/png")
    painted = Image.open(io.BytesIO(body))
    assert (painted.mode, painted.size) == ("RGB", (448, 448))
    assert answers["painted again"][2] == body
    assert len(list((tmp_path / "heatmaps").rglob("*.png"))) == 1
    assert answers["broken map"][0] == 500
    assert answers["feedback"][0] == 201
    assert answers["viewer feedback"][0] == 403
    assert answers["bad label"][0] == 400
    assert sql(db_url, "SELECT label, note FROM feedback") == [("coccidiosis", "blood")]


def test_command_reaches_connected_device(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """POST /api/devices/{id}/commands delivers a command frame to the camera;
    a photo cannot be asked of a camera that is not connected."""
    camera, absent = add_camera(db_url), add_camera(db_url)
    token = add_user(db_url, "ann", "farm-a")
    body = {"name": "set_schedule", "args": {"interval_s": 60}}

    async def scenario() -> tuple[dict[str, Any], Any, int, int]:
        received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with client_for(hub, camera, on_command=received.put_nowait):
                path = f"/api/devices/{camera.device_id}/commands"
                sent = await http_get(hub, path, token, "POST", body)
                command = await asyncio.wait_for(received.get(), 10)
                bad = await http_get(hub, path, token, "POST", {"name": "explode"})
            path = f"/api/devices/{absent.device_id}/commands"
            photo_now = {"name": "capture_now", "args": {"count": 1}}
            offline = await http_get(hub, path, token, "POST", photo_now)
            return command, sent, bad[0], offline[0]

    command, sent, bad, offline = asyncio.run(scenario())
    assert (command["name"], command["args"]) == ("set_schedule", {"interval_s": 60})
    assert sent[0] == 202 and json.loads(sent[2])["delivered"] is True
    assert (bad, offline) == (400, 409)


def test_schedule_for_an_offline_camera_is_kept_for_its_next_connection(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """set_schedule to a camera that is away is stored and comes in the
    auth_ok of its next connection, to this hub or another."""
    camera = add_camera(db_url)
    token = add_user(db_url, "ann", "farm-a")
    schedule = {
        "interval_s": 300,
        "active_start_utc": "05:00",
        "active_end_utc": "21:00",
    }
    body = {"name": "set_schedule", "args": schedule}

    async def scenario() -> tuple[Any, Any, Any]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            path = f"/api/devices/{camera.device_id}/commands"
            queued = await http_get(hub, path, token, "POST", body)
            async with client_for(hub, camera) as client:
                welcome = client.welcome
            listed = await http_get(hub, "/api/devices", token)
        return queued, welcome, json.loads(listed[2])["devices"]

    queued, welcome, devices = asyncio.run(scenario())
    assert queued[0] == 202
    reply = json.loads(queued[2])
    assert (reply["delivered"], reply["command_id"]) == (False, None)
    assert welcome is not None and welcome.schedule == schedule
    assert [device["schedule"] for device in devices] == [schedule]
