"""``/ws/events?since=``: a client that reconnects gets what it missed."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from farmeye.events import encode_event, make_event, validate_event
from hub.stream import StreamClient, StreamFilter, Viewer, replay_key
from tests.hub.support import (
    add_camera,
    add_user,
    client_for,
    event_stream,
    hub_settings,
    next_event,
    photo,
    running_hub,
    sql,
)


def record_analysis_and_alert(db_url: str, capture_id: int, farm_id: int) -> int:
    """What a worker and the alert rule leave for a sick photo; the alert id."""
    sql(
        db_url,
        "INSERT INTO analyses (capture_id, model_version, status, label, scores)"
        " VALUES (%s, 'm/full', 'done', 'coccidiosis', '{\"coccidiosis\": 0.9}')",
        capture_id,
    )
    ((alert_id,),) = sql(
        db_url,
        "INSERT INTO alerts (farm_id, coop_id, capture_id, label, level, message)"
        " SELECT farm_id, coop_id, id, 'coccidiosis', 'warning', 'three sick photos'"
        "   FROM captures WHERE id = %s RETURNING id",
        capture_id,
    )
    assert farm_id
    return int(alert_id)


def test_reconnecting_client_gets_the_missed_events_then_live_ones(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """Captures, triage verdicts, analyses and alerts since the given time
    come first, oldest first, marked replay, and only of the viewer's farm;
    then the stream goes on live."""
    mine, theirs = add_camera(db_url, farm="farm-a"), add_camera(db_url, farm="farm-b")
    token = add_user(db_url, "ann", "farm-a")

    async def scenario() -> tuple[list[int], list[dict[str, Any]], dict[str, Any]]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with event_stream(hub, token) as first:  # the client's first life
                ids = []
                for seed in range(2):
                    async with client_for(hub, mine) as client:
                        ids.append((await client.upload(photo(seed))).capture_id)
                    await next_event(first, "triage", capture_id=ids[-1])
            async with client_for(hub, theirs) as client:
                await client.upload(photo(9))
            record_analysis_and_alert(db_url, ids[0], mine.farm_id)

            async with event_stream(hub, token, "&since=10m") as second:
                replayed = [json.loads(await second.recv()) for _ in range(6)]
                async with client_for(hub, mine) as client:
                    live_id = (await client.upload(photo(5))).capture_id
                live = await next_event(second, "triage", capture_id=live_id)
            return ids, replayed, live

    ids, replayed, live = asyncio.run(scenario())

    kinds = [(event["type"], event["capture_id"]) for event in replayed]
    assert sorted(kinds[:4]) == sorted(
        [
            ("capture", ids[0]),
            ("triage", ids[0]),
            ("capture", ids[1]),
            ("triage", ids[1]),
        ]
    )
    assert kinds[4:] == [("analysis", ids[0]), ("alert", ids[0])]
    assert [event["time"] for event in replayed] == sorted(
        event["time"] for event in replayed
    )
    assert all(event["replay"] is True for event in replayed)
    for event in replayed:  # rebuilt without the check live events get
        validate_event(event)
    assert {event["farm_id"] for event in replayed} == {mine.farm_id}
    triage = next(event for event in replayed if event["type"] == "triage")
    assert triage["label"] and triage["scores"] and triage["model_version"]
    assert replayed[4]["label"] == "coccidiosis" and replayed[4]["status"] == "done"
    assert replayed[5]["message"] == "three sick photos"
    assert "replay" not in live


def test_replay_honours_the_query_filters_and_a_bad_since_is_refused(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    cam_1, cam_2 = add_camera(db_url, coop="c1"), add_camera(db_url, coop="c2")
    token = add_user(db_url, "ann", "farm-a")

    async def first_event(hub: Any, query: str) -> dict[str, Any] | None:
        async with event_stream(hub, token, query) as stream:
            try:
                return json.loads(await asyncio.wait_for(stream.recv(), 1.0))  # type: ignore[no-any-return]
            except TimeoutError:
                return None

    async def scenario() -> tuple[Any, Any, Any, int]:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            for seed, camera in enumerate([cam_1, cam_2]):
                async with client_for(hub, camera) as client:
                    await client.upload(photo(seed))
            await asyncio.sleep(0.5)  # both triage rows committed
            narrowed = await first_event(hub, f"&since=1h&coop={cam_2.coop_id}")
            later = datetime.now(UTC) + timedelta(minutes=1)
            nothing = await first_event(hub, f"&since={later:%Y-%m-%dT%H:%M:%SZ}")
            unknown_coop = await first_event(hub, "&since=1h&coop=nope")
            statuses = []
            for bad in ("last-tuesday", "99999999999d"):
                with pytest.raises(InvalidStatus) as refused:
                    async with event_stream(hub, token, f"&since={bad}"):
                        pass
                statuses.append(refused.value.response.status_code)
            return narrowed, nothing, unknown_coop, statuses

    narrowed, nothing, unknown_coop, statuses = asyncio.run(scenario())
    assert narrowed is not None and narrowed["device_id"] == cam_2.device_id
    assert nothing is None and unknown_coop is None
    assert statuses == [400, 400]


# The hand-over from replay to live, on one real WebSocket


async def connected_pair() -> tuple[
    StreamClient, ClientProtocol, asyncio.StreamReader, asyncio.StreamWriter
]:
    """A StreamClient and the client end of its WebSocket, over a socket pair."""
    hub_end, client_end = socket.socketpair()
    hub_reader, hub_writer = await asyncio.open_connection(sock=hub_end)
    client_reader, client_writer = await asyncio.open_connection(sock=client_end)
    client = ClientProtocol(parse_uri("ws://hub/ws/events"))
    client.send_request(client.connect())
    for data in client.data_to_send():
        client_writer.write(data)
    server = ServerProtocol(extensions=None)
    server.receive_data(await hub_reader.readuntil(b"\r\n\r\n"))
    server.send_response(server.accept(server.events_received()[0]))
    viewer = Viewer(user_id=1, name="ann", roles={"1": "manager"})
    stream_client = StreamClient(server, hub_writer, StreamFilter(viewer))
    stream_client.flush()
    client.receive_data(await client_reader.readuntil(b"\r\n\r\n"))
    client.events_received()
    return stream_client, client, client_reader, client_writer


async def received(client: ClientProtocol, reader: asyncio.StreamReader) -> list[Any]:
    """Every event frame that has arrived within half a second."""
    events: list[Any] = []
    while True:
        try:
            data = await asyncio.wait_for(reader.read(65536), 0.5)
        except TimeoutError:
            return events
        assert data, "the hub end closed the connection"
        client.receive_data(data)
        for frame in client.events_received():
            assert isinstance(frame, Frame) and frame.opcode is Opcode.TEXT
            events.append(json.loads(frame.data))


def event(kind: str, capture_id: int, **extra: Any) -> dict[str, Any]:
    return make_event(kind, farm_id=1, coop_id=2, capture_id=capture_id, **extra)


def test_live_events_wait_for_the_replay_and_are_not_sent_twice() -> None:
    async def scenario() -> list[Any]:
        stream_client, client, reader, writer = await connected_pair()
        stream_client.hold()
        for live in (event("triage", 7, label="healthy"), event("capture", 8)):
            stream_client.hold_back(live, encode_event(live))
        stream_client.replay(
            [event("capture", 7, replay=True), event("triage", 7, replay=True)]
        )
        after = event("triage", 8, label="healthy")
        stream_client.hold_back(after, encode_event(after))
        try:
            return await received(client, reader)
        finally:
            writer.close()

    got = [(e["type"], e["capture_id"], "replay" in e) for e in asyncio.run(scenario())]
    assert got == [
        ("capture", 7, True),
        ("triage", 7, True),  # its live twin, held meanwhile, is dropped
        ("capture", 8, False),
        ("triage", 8, False),
    ]


def test_replay_key_names_the_fact_an_event_reports() -> None:
    analysis = event("analysis", 3, model_version="m/full")
    assert replay_key(analysis) == replay_key({**analysis, "replay": True})
    assert replay_key(analysis) != replay_key({**analysis, "model_version": "m/2"})
    assert replay_key(event("capture", 3)) != replay_key(event("triage", 3))
