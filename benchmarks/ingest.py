"""Hub ingest: throughput and latency of simulated cameras against the bare
triage limit of this machine, in one run; prints one JSON object.

Three measurements, all with the same 1280 x 960 JPEGs:

- flood: ``--cameras`` devices upload as fast as they are acknowledged (one
  photo in flight each) for ``--seconds``: accepted images/s, ACK latency and
  upload-to-triage-event latency (the event as a WebSocket client gets it);
- paced: the same devices together send ``--rate`` images/s: the latencies
  at a farm's steady load;
- bare: decode + LiteRT on the same bytes in one process per core, nothing
  else: the limit the hub's throughput is compared with (``ratio``).

The hub runs as ``farmeye hub`` in its own process, on embedded PostgreSQL
(fsync on) and Redis in a temporary folder, or on FARMEYE_BENCH_DATABASE_URL
and FARMEYE_BENCH_REDIS_URL when set.

    python benchmarks/ingest.py [--cameras 50] [--seconds 20] [--rate 50]
                                [--no-dispatch]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image
from websockets.asyncio.client import connect

from farmeye import auth, db
from farmeye.auth import DeviceCredentials
from farmeye.device_client import DeviceClient, parse_address
from farmeye.triage import TriageModel
from hub.demo import synthetic_photo

FRAME_SIZE_PX = (1280, 960)
DISTINCT_FRAMES = 24
HUB_LINE = re.compile(r"hub: ingest (\S+:\d+) http (\S+)")


def camera_frames(count: int) -> list[bytes]:
    """Distinct camera-like JPEGs: drawn droppings plus sensor noise."""
    rng = random.Random(7)
    noise = np.random.default_rng(7)
    frames = []
    for index in range(count):
        label = ("healthy", "coccidiosis", "salmonella", "newcastle")[index % 4]
        drawn = Image.open(io.BytesIO(synthetic_photo(rng, label, FRAME_SIZE_PX)))
        pixels = np.asarray(drawn, dtype=np.int16)
        pixels += noise.integers(-12, 13, pixels.shape, dtype=np.int16)
        out = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
            out, format="JPEG", quality=90
        )
        frames.append(out.getvalue())
    return frames


def unique(frame: bytes) -> bytes:
    """The same photo with a random JPEG comment, so each upload is new."""
    comment = secrets.token_bytes(16)
    return (
        frame[:2]
        + b"\xff\xfe"
        + (len(comment) + 2).to_bytes(2, "big")
        + comment
        + frame[2:]
    )


@dataclass
class Samples:
    acks: int = 0
    ack_ms: list[float] = field(default_factory=list)
    sent_s: dict[int, float] = field(default_factory=dict)
    triage_s: dict[int, float] = field(default_factory=dict)

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        triage_ms = [
            (self.triage_s[c] - sent) * 1000.0
            for c, sent in self.sent_s.items()
            if c in self.triage_s
        ]
        return {
            "accepted_per_s": round(self.acks / elapsed_s, 1),
            "uploads": self.acks,
            "ack_ms": percentiles(self.ack_ms),
            "upload_to_triage_ms": percentiles(triage_ms),
            "triage_events_seen": len(triage_ms),
        }


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 1), "p99": round(float(p99), 1)}


# The hub under test


@contextlib.contextmanager
def servers(folder: Path) -> Iterator[tuple[str, str]]:
    database_url = os.environ.get("FARMEYE_BENCH_DATABASE_URL")
    redis_url = os.environ.get("FARMEYE_BENCH_REDIS_URL")
    if database_url and redis_url:
        yield database_url, redis_url
        return
    from farmeye.embedded import EmbeddedServices

    with EmbeddedServices(folder / "servers") as services:
        yield services.database_url, services.redis_url


def register(database_url: str, cameras: int) -> tuple[list[DeviceCredentials], str]:
    db.migrate(database_url)
    connection = db.connect(database_url)
    try:
        farm = f"bench-{secrets.token_hex(3)}"
        devices = [
            db.add_device(
                connection,
                f"cam-{i}",
                f"coop-{i % 10}",
                farm,
                iterations=auth.MIN_ITERATIONS,
            )
            for i in range(cameras)
        ]
        token = db.add_user(connection, f"bench-{farm}", farm, "viewer").token
    finally:
        connection.close()
    return [DeviceCredentials(d.device_id, d.secret) for d in devices], token


@contextlib.contextmanager
def hub_process(
    folder: Path, database_url: str, redis_url: str, queue_bound: int
) -> Iterator[tuple[str, str, int]]:
    env = dict(
        os.environ,
        FARMEYE_DATABASE_URL=database_url,
        FARMEYE_REDIS_URL=redis_url,
        FARMEYE_DATA_DIR=str(folder / "hub"),
        FARMEYE_INGEST_HOST="127.0.0.1",
        FARMEYE_INGEST_PORT="0",
        FARMEYE_HTTP_HOST="127.0.0.1",
        FARMEYE_HTTP_PORT="0",
        FARMEYE_TRIAGE_PROCESSES=str(os.cpu_count() or 1),
        FARMEYE_QUEUE_BOUND=str(queue_bound),
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
        yield match.group(1), match.group(2), process.pid
    finally:
        process.terminate()
        process.wait(60)


# Cameras


async def follow_triage(
    http: str, token: str, samples: Samples, ready: asyncio.Event
) -> None:
    url = http.replace("http://", "ws://") + f"/ws/events?token={token}"
    async with connect(url, compression=None, max_queue=None) as stream:
        ready.set()
        async for message in stream:
            event = json.loads(message)
            if event["type"] == "triage":
                samples.triage_s[event["capture_id"]] = time.perf_counter()


async def camera(
    client: DeviceClient,
    frames: list[bytes],
    samples: Samples,
    until_s: float,
    interval_s: float | None,
) -> None:
    rng = random.Random()
    if interval_s:
        await asyncio.sleep(rng.random() * interval_s)
    next_s = time.perf_counter()
    while time.perf_counter() < until_s:
        data = unique(rng.choice(frames))
        sent_s = time.perf_counter()
        ack = await client.upload(data)
        samples.ack_ms.append((time.perf_counter() - sent_s) * 1000.0)
        samples.sent_s[ack.capture_id] = sent_s
        samples.acks += 1
        if interval_s:
            next_s += interval_s
            await asyncio.sleep(max(0.0, next_s - time.perf_counter()))


@dataclass
class Bench:
    """Everything a phase needs: the connected cameras and the hub."""

    clients: list[DeviceClient]
    frames: list[bytes]
    http: str
    token: str
    hub_pid: int


def cpu_seconds(hub_pid: int) -> dict[str, float]:
    """CPU time so far of the hub process, its children (triage) and this one."""
    hub = psutil.Process(hub_pid)
    children = sum(sum(c.cpu_times()[:2]) for c in hub.children(recursive=True))
    return {
        "hub_process": sum(hub.cpu_times()[:2]),
        "triage_pool": children,
        "cameras": sum(psutil.Process().cpu_times()[:2]),
    }


async def phase(bench: Bench, seconds: float, rate: float | None) -> dict[str, Any]:
    samples = Samples()
    ready = asyncio.Event()
    follower = asyncio.create_task(
        follow_triage(bench.http, bench.token, samples, ready)
    )
    await ready.wait()
    cpu_before = cpu_seconds(bench.hub_pid)
    interval_s = len(bench.clients) / rate if rate else None
    start_s = time.perf_counter()
    await asyncio.gather(
        *(
            camera(client, bench.frames, samples, start_s + seconds, interval_s)
            for client in bench.clients
        )
    )
    elapsed_s = time.perf_counter() - start_s
    # Let triage catch up, so every upload of the phase has its event.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(120):
            while len(samples.triage_s) < samples.acks:
                await asyncio.sleep(0.1)
    follower.cancel()
    cpu_after = cpu_seconds(bench.hub_pid)
    summary = samples.summary(elapsed_s)
    count = max(samples.acks, 1)
    summary["cpu_ms_per_image"] = {
        part: round((cpu_after[part] - cpu_before[part]) * 1000.0 / count, 2)
        for part in cpu_before
    }
    return summary


async def measure(
    credentials: list[DeviceCredentials],
    token: str,
    addresses: tuple[str, str, int],
    frames: list[bytes],
    seconds: float,
    rate: float,
) -> dict[str, Any]:
    ingest, http, hub_pid = addresses
    host, port = parse_address(ingest)
    clients = [DeviceClient(c, host, port, timeout_s=120) for c in credentials]
    await asyncio.gather(*(c.connect() for c in clients))
    bench = Bench(clients, frames, http, token, hub_pid)
    try:
        await phase(bench, 3.0, None)  # warm-up
        flood = await phase(bench, seconds, None)
        paced = await phase(bench, seconds, rate)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return {"flood": flood, "paced": paced}


# The bare limit

_model: TriageModel | None = None


def _load() -> None:
    global _model
    _model = TriageModel.shipped(threads=1)


def _classify_for(seconds: float, frames: list[bytes]) -> int:
    assert _model is not None
    done, end_s = 0, time.perf_counter() + seconds
    while time.perf_counter() < end_s:
        _model.classify(frames[done % len(frames)])
        done += 1
    return done


def _cpu_ms_per_image(seconds: float, frames: list[bytes]) -> float:
    start_s = time.process_time()
    count = _classify_for(seconds, frames)
    return (time.process_time() - start_s) * 1000.0 / count


def bare_limit(frames: list[bytes], seconds: float) -> dict[str, Any]:
    processes = os.cpu_count() or 1
    with ProcessPoolExecutor(processes, initializer=_load) as pool:
        list(pool.map(_classify_for, [0.5] * processes, [frames] * processes))
        counts = list(
            pool.map(_classify_for, [seconds] * processes, [frames] * processes)
        )
        cpu_ms = next(pool.map(_cpu_ms_per_image, [2.0], [frames]))
    return {
        "processes": processes,
        "images_per_s": round(sum(counts) / seconds, 1),
        "cpu_ms_per_image": round(cpu_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=50.0, help="paced images/s")
    parser.add_argument(
        "--no-dispatch",
        action="store_true",
        help="keep captures pending (no Celery tasks), to see what dispatch costs",
    )
    args = parser.parse_args()

    frames = camera_frames(DISTINCT_FRAMES)
    with tempfile.TemporaryDirectory(prefix="farmeye-bench-") as tmp:
        folder = Path(tmp)
        with servers(folder) as (database_url, redis_url):
            credentials, token = register(database_url, args.cameras)
            # No worker drains the queue here, so a bound of 1 keeps every
            # capture after the first pending: the hub without dispatch.
            bound = 1 if args.no_dispatch else 10**9
            with hub_process(folder, database_url, redis_url, bound) as addresses:
                hub = asyncio.run(
                    measure(
                        credentials, token, addresses, frames, args.seconds, args.rate
                    )
                )
    bare = bare_limit(frames, args.seconds)
    ratio = hub["flood"]["accepted_per_s"] / bare["images_per_s"]
    print(
        json.dumps(
            {
                "benchmark": "ingest",
                "cameras": args.cameras,
                "frame": {
                    "size_px": list(FRAME_SIZE_PX),
                    "mean_bytes": int(sum(map(len, frames)) / len(frames)),
                },
                "cpu_count": os.cpu_count(),
                "load_1m_at_end": round(os.getloadavg()[0], 2),
                "hub": hub,
                "bare": bare,
                "ratio": round(ratio, 3),
                "targets": {"ratio": 0.6, "paced_upload_to_triage_p99_ms": 50},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
