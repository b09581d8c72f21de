"""Event fan-out: events delivered per second to many WebSocket subscribers
by the hub, against a bare ``websockets`` broadcast of the same messages, in
the same run; prints one JSON object.

Both servers hear the events on the same Redis channel. The hub (``farmeye
hub``) parses each event, checks every subscriber's filters and sends; the
bare server (``websockets.asyncio.server.serve`` plus ``broadcast``) sends
every message to every connection and does nothing else. The subscribers are
light raw-socket clients in this process that count text frames, so both
servers are measured with the same load on the same cores.

    python benchmarks/fanout.py [--subscribers 1000] [--events 300]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from farmeye import db
from farmeye.events import make_event

HUB_LINE = re.compile(r"hub: ingest (\S+:\d+) http http://(\S+):(\d+)")
CHANNEL = "farmeye:events"


class Subscriber(asyncio.Protocol):
    """A WebSocket client that only counts the text frames it receives."""

    def __init__(self, done: asyncio.Event, expected: list[int]) -> None:
        self.buffer = bytearray()
        self.handshaken = asyncio.get_running_loop().create_future()
        self.frames = 0
        self.done = done
        self.expected = expected
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.handshaken.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[: self.buffer.find(b"\r\n")])
            del self.buffer[: end + 4]
            if b" 101 " not in status:
                self.handshaken.set_exception(RuntimeError(status.decode()))
                return
            self.handshaken.set_result(None)
        self._count_frames()

    def _count_frames(self) -> None:
        buffer = self.buffer
        offset = 0
        while len(buffer) - offset >= 2:
            length, header = buffer[offset + 1] & 0x7F, 2
            if length == 126:
                if len(buffer) - offset < 4:
                    break
                length, header = int.from_bytes(buffer[offset + 2 : offset + 4]), 4
            elif length == 127:
                if len(buffer) - offset < 10:
                    break
                length, header = int.from_bytes(buffer[offset + 2 : offset + 10]), 10
            if len(buffer) - offset < header + length:
                break
            opcode = buffer[offset] & 0x0F
            if opcode == 1:
                self.frames += 1
            elif opcode == 9:
                self._pong(bytes(buffer[offset + header : offset + header + length]))
            offset += header + length
        del buffer[:offset]
        if self.frames >= self.expected[0]:
            self.done.set()

    def _pong(self, payload: bytes) -> None:
        assert self.transport is not None
        # A masked pong with an all-zero mask key carries the payload as is.
        self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)


async def subscribe(
    host: str, port: int, path: str, count: int, expected: list[int]
) -> list[tuple[Subscriber, asyncio.Event]]:
    loop = asyncio.get_running_loop()
    subscribers = []
    for _ in range(count):
        done = asyncio.Event()
        _, subscriber = await loop.create_connection(
            lambda done=done: Subscriber(done, expected), host, port
        )
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        assert subscriber.transport is not None
        subscriber.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        subscribers.append((subscriber, done))
    await asyncio.gather(*(s.handshaken for s, _ in subscribers))
    return subscribers


def events(count: int, farm_id: int, coop_id: int) -> list[bytes]:
    messages = []
    for index in range(count):
        event = make_event(
            "triage",
            farm_id=farm_id,
            coop_id=coop_id,
            device_id="dev_benchmark01",
            capture_id=index + 1,
            label="healthy",
            scores={
                "healthy": 0.91,
                "coccidiosis": 0.05,
                "salmonella": 0.03,
                "newcastle": 0.01,
            },
            model_version="bench/triage",
            latency_ms=3.1,
        )
        messages.append(json.dumps(event, separators=(",", ":")).encode())
    return messages


async def deliver(
    host: str,
    port: int,
    path: str,
    redis_url: str,
    subscribers: int,
    messages: list[bytes],
) -> dict[str, Any]:
    """Connect the subscribers, publish the messages, time the delivery."""
    expected = [len(messages)]
    clients = await subscribe(host, port, path, subscribers, expected)
    await asyncio.sleep(0.5)
    publisher = redis.Redis.from_url(redis_url)
    start_s = time.perf_counter()
    with publisher.pipeline(transaction=False) as pipe:
        for message in messages:
            pipe.publish(CHANNEL, message)
        pipe.execute()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(300):
            await asyncio.gather(*(done.wait() for _, done in clients))
    elapsed_s = time.perf_counter() - start_s
    publisher.close()
    delivered = sum(client.frames for client, _ in clients)
    for client, _ in clients:
        assert client.transport is not None
        client.transport.close()
    return {
        "delivered": delivered,
        "expected": subscribers * len(messages),
        "seconds": round(elapsed_s, 3),
        "events_per_s": round(delivered / elapsed_s, 1),
    }


# The bare server


def bare_server(redis_url: str, ready: Any) -> None:
    asyncio.run(_bare_server(redis_url, ready))


async def _bare_server(redis_url: str, ready: Any) -> None:
    import redis.asyncio as aioredis
    from websockets.asyncio.server import broadcast, serve

    connections: set[Any] = set()

    async def handler(connection: Any) -> None:
        connections.add(connection)
        try:
            await connection.wait_closed()
        finally:
            connections.discard(connection)

    async with serve(
        handler, "127.0.0.1", 0, compression=None, ping_interval=None, max_queue=None
    ) as server:
        client = aioredis.Redis.from_url(redis_url)
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(CHANNEL)
            ready.send(server.sockets[0].getsockname()[1])
            async for message in pubsub.listen():
                if message["type"] == "message":
                    broadcast(connections, message["data"].decode())


# The hub under test


@contextlib.contextmanager
def hub_process(
    folder: Path, database_url: str, redis_url: str
) -> Iterator[tuple[str, int]]:
    env = dict(
        os.environ,
        FARMEYE_DATABASE_URL=database_url,
        FARMEYE_REDIS_URL=redis_url,
        FARMEYE_DATA_DIR=str(folder / "hub"),
        FARMEYE_INGEST_HOST="127.0.0.1",
        FARMEYE_INGEST_PORT="0",
        FARMEYE_HTTP_HOST="127.0.0.1",
        FARMEYE_HTTP_PORT="0",
        FARMEYE_TRIAGE_PROCESSES="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "farmeye.cli", "hub"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        match = HUB_LINE.search(process.stdout.readline())
        assert match, "the hub did not start"
        yield match.group(2), int(match.group(3))
    finally:
        process.terminate()
        process.wait(60)


def setup(database_url: str) -> tuple[str, int, int]:
    """A user and the farm and coop the events name."""
    db.migrate(database_url)
    connection = db.connect(database_url)
    try:
        farm_id = db.ensure_farm(connection, "fanout")
        coop_id = db.ensure_coop(connection, farm_id, "coop-1")
        token = db.add_user(connection, "fanout-bench", "fanout", "viewer").token
    finally:
        connection.close()
    return token, farm_id, coop_id


@contextlib.contextmanager
def servers(folder: Path) -> Iterator[tuple[str, str]]:
    from farmeye.embedded import EmbeddedServices

    with EmbeddedServices(folder / "servers") as services:
        yield services.database_url, services.redis_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="farmeye-fanout-") as tmp:
        folder = Path(tmp)
        with servers(folder) as (database_url, redis_url):
            token, farm_id, coop_id = setup(database_url)
            messages = events(args.events, farm_id, coop_id)
            with hub_process(folder, database_url, redis_url) as (host, port):
                hub = asyncio.run(
                    deliver(
                        host,
                        port,
                        f"/ws/events?token={token}",
                        redis_url,
                        args.subscribers,
                        messages,
                    )
                )
            receiver, sender = multiprocessing.Pipe(duplex=False)
            bare_process = multiprocessing.Process(
                target=bare_server, args=(redis_url, sender)
            )
            bare_process.start()
            try:
                bare_port = receiver.recv()
                bare = asyncio.run(
                    deliver(
                        "127.0.0.1",
                        bare_port,
                        "/",
                        redis_url,
                        args.subscribers,
                        messages,
                    )
                )
            finally:
                bare_process.terminate()
                bare_process.join(30)
    print(
        json.dumps(
            {
                "benchmark": "fanout",
                "subscribers": args.subscribers,
                "events": args.events,
                "event_bytes": len(messages[0]),
                "cpu_count": os.cpu_count(),
                "load_1m_at_end": round(os.getloadavg()[0], 2),
                "hub": hub,
                "bare_websockets": bare,
                "ratio": round(hub["events_per_s"] / bare["events_per_s"], 3),
                "target": {"ratio": 0.8},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
