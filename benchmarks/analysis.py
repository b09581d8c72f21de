"""Analysis workers: the Celery path against bare batched inference, in one run.

Prints one JSON object. With the same photos, batch size and device:

- bare: ``P`` processes each decode their share of the photos and run the
  compiled model on batches of ``--batch-size``, nothing else: the limit;
- celery: ``farmeye worker --concurrency P``; images/s to the last
  ``analysis`` event, so it covers queue, batching, inference, Grad-CAM,
  commit, announce and acknowledgement. ``end_to_end`` also publishes the
  tasks from this process while the workers run (a hub's work, here on the
  same cores); ``drain`` queues them first, with the workers paused. The
  ratios are celery / bare (target >= 0.85). Bare and Celery runs take
  turns ``--rounds`` times, bare first and last, and each Celery run is
  compared with the bare runs on either side of it: the medians are reported;
- for ``P`` in ``--processes`` (default 1 and 2): the scaling;
- latency: one worker process, tasks published at each of ``--rates``
  images/s for ``--seconds``; publish-to-event latency p50 / p99. A rate
  above what the worker sustains shows a growing queue, not a latency.

Servers are embedded PostgreSQL (fsync on) and Redis in a temporary folder,
or FARMEYE_BENCH_DATABASE_URL and FARMEYE_BENCH_REDIS_URL when set.

    python benchmarks/analysis.py [--device cpu|gpu] [--images 400]
        [--batch-size B] [--batch-wait-ms T] [--processes 1,2]
        [--rates 20,5] [--seconds 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import redis
from celery import Celery
from PIL import Image

from farmeye import db
from farmeye.events import EVENTS_CHANNEL, decode_event
from farmeye.tasks import (
    ANALYSE_TASK,
    ANALYSIS_QUEUE,
    PRIORITY_ROUTINE,
    analyse_arguments,
    stash_photo,
)
from farmeye.tasks import celery_settings as task_settings

DISTINCT_FRAMES = 32
WARMUP_IMAGES = 16


def camera_frames(count: int, size: tuple[int, int]) -> list[bytes]:
    """Distinct camera-like JPEGs: coloured blobs on a floor, sensor noise."""
    rng = np.random.default_rng(11)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for _ in range(count):
        pixels = np.empty((height, width, 3), np.float32)
        pixels[:] = rng.uniform(60, 160, 3)
        for _ in range(8):
            cx, cy, r = (
                rng.uniform(0, width),
                rng.uniform(0, height),
                rng.uniform(20, 120),
            )
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            pixels += blob[..., None] * rng.uniform(-120, 120, 3)
        pixels += rng.normal(0, 10, pixels.shape)
        out = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            out, format="JPEG", quality=88
        )
        frames.append(out.getvalue())
    return frames


# -- bare inference --------------------------------------------------------


def _bare_process(
    photos: Sequence[bytes],
    options: dict[str, Any],
    index: int,
    barrier: Any,
    results: Any,
) -> None:
    if options["device"] == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    from farmeye.imaging import preprocess
    from farmeye.models import resolve
    from workers.runner import ModelRunner, cpu_threads_per_process

    runner = ModelRunner(
        resolve(options["model"]),
        device=options["device"],
        mixed_precision=options["mixed_precision"],
        device_index=index,
        cpu_threads=cpu_threads_per_process(options["processes"]),
    )
    batch = options["batch_size"]
    barrier.wait()
    started_s, cpu_started_s = time.time(), time.process_time()
    for start in range(0, len(photos), batch):
        chunk = photos[start : start + batch]
        runner.scores(np.stack([preprocess(p, runner.input_size) for p in chunk]))
    results.put((started_s, time.time(), time.process_time() - cpu_started_s))


def bare_throughput(
    photos: Sequence[bytes], options: dict[str, Any]
) -> tuple[float, float]:
    """Images/s of decode + batched inference in ``processes`` processes, and
    CPU seconds per image."""
    context = multiprocessing.get_context("spawn")
    processes = options["processes"]
    barrier = context.Barrier(processes)
    results = context.Queue()
    shares = [list(photos[i::processes]) for i in range(processes)]
    workers = [
        context.Process(
            target=_bare_process, args=(shares[i], options, i, barrier, results)
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    spans = [results.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    elapsed_s = max(span[1] for span in spans) - min(span[0] for span in spans)
    cpu_s = sum(span[2] for span in spans)
    return len(photos) / elapsed_s, cpu_s / len(photos)


# -- the Celery path -------------------------------------------------------


class Events:
    """Arrival times of ``analysis`` events, by capture id."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=True
        )
        self._pubsub.subscribe(EVENTS_CHANNEL)
        self.arrived_s: dict[int, float] = {}
        self.heatmaps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is None:
                continue
            event = decode_event(message["data"])
            if (
                event["type"] == "analysis"
                and event["capture_id"] not in self.arrived_s
            ):
                self.arrived_s[event["capture_id"]] = time.time()
                self.heatmaps += bool(event.get("heatmap"))

    def wait_for(self, capture_ids: Sequence[int], timeout_s: float) -> None:
        deadline_s = time.monotonic() + timeout_s
        while not all(c in self.arrived_s for c in capture_ids):
            if time.monotonic() > deadline_s:
                missing = sum(c not in self.arrived_s for c in capture_ids)
                raise RuntimeError(f"{missing} analyses never announced")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


class Bench:
    """Servers, a farm and a task publisher shared by the Celery runs."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        db.migrate(database_url)
        connection = db.connect(database_url)
        try:
            device = db.add_device(connection, f"bench-{time.time_ns()}", "bench")
        finally:
            connection.close()
        self.device = device
        self.app = Celery("bench-hub", set_as_current=False)
        self.app.conf.update(task_settings(redis_url))
        self.events = Events(redis_url)
        self.stash = redis.Redis.from_url(redis_url)
        self._sequence = 0
        self.options: dict[str, Any] = {}
        """The options of the run in progress."""

    def captures(self, photos: Sequence[bytes]) -> list[int]:
        connection = db.connect(self.database_url)
        ids = []
        try:
            with connection, connection.cursor() as cursor:
                for data in photos:
                    self._sequence += 1
                    digest = hashlib.sha256(data + str(self._sequence).encode())
                    cursor.execute(
                        "INSERT INTO captures (device_id, coop_id, farm_id, sha256,"
                        " size_bytes, content_type, captured_at, storage_key,"
                        " dispatch_state) VALUES (%s, %s, %s, %s, %s, 'image/jpeg',"
                        " now(), 'bench', 'queued') RETURNING id",
                        (
                            self.device.device_id,
                            self.device.coop_id,
                            self.device.farm_id,
                            digest.hexdigest(),
                            len(data),
                        ),
                    )
                    row = cursor.fetchone()
                    assert row is not None
                    ids.append(int(row[0]))
        finally:
            connection.close()
        return ids

    def publish(self, capture_id: int, data: bytes) -> float:
        """Stash the photo and send its task, as the hub's dispatcher does."""
        published_s = time.time()
        key = stash_photo(self.stash, capture_id, data)
        self.app.send_task(
            ANALYSE_TASK,
            kwargs=analyse_arguments(
                capture_id, None, image_key=key, published_at=published_s
            ),
            priority=PRIORITY_ROUTINE,
        )
        return published_s


def worker_cpu_s(supervisor: subprocess.Popen[str]) -> float:
    """CPU seconds used so far by the worker processes under ``supervisor``."""
    pid = supervisor.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    ticks = 0
    for child in children:
        fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running_worker(
    bench: Bench, options: dict[str, Any]
) -> Iterator[subprocess.Popen[str]]:
    env = dict(os.environ)
    env.update(
        FARMEYE_DATABASE_URL=bench.database_url, FARMEYE_REDIS_URL=bench.redis_url
    )
    command = [
        sys.executable,
        "-m",
        "farmeye.cli",
        "worker",
        f"--concurrency={options['processes']}",
        f"--device={options['device']}",
        f"--batch-size={options['batch_size']}",
        f"--batch-wait-ms={options['batch_wait_ms']}",
        f"--model={options['model']}",
    ]
    if options["mixed_precision"]:
        command.append("--mixed-precision")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("ready:"):
                break
        else:
            raise RuntimeError("farmeye worker exited before it was ready")
        yield process
    finally:
        process.terminate()
        process.wait(300)


def publish_all(bench: Bench, photos: Sequence[bytes]) -> tuple[list[int], float]:
    """Queue one task per photo; the ids and the seconds publishing took."""
    ids = bench.captures(photos)
    started_s = time.time()
    for capture_id, data in zip(ids, photos, strict=True):
        bench.publish(capture_id, data)
    return ids, time.time() - started_s


def images_per_s(bench: Bench, ids: Sequence[int], started_s: float) -> float:
    bench.events.wait_for(ids, timeout_s=1800)
    return len(ids) / (max(bench.events.arrived_s[c] for c in ids) - started_s)


def celery_throughput(
    bench: Bench, supervisor: subprocess.Popen[str], photos: Sequence[bytes]
) -> dict[str, float]:
    """Images/s through running workers, two ways.

    end_to_end: this process publishes every task while the workers take
    them (the publisher shares this machine's cores, which a hub would not);
    drain: the tasks are queued while the workers are paused, then the
    workers are resumed and the clock runs until the last event.
    """
    started_s = time.time()
    ids, publish_s = publish_all(bench, photos)
    end_to_end = images_per_s(bench, ids, started_s)

    workers = int(bench.options["processes"])
    control = bench.app.control
    control.cancel_consumer(ANALYSIS_QUEUE, reply=True, limit=workers, timeout=10)
    ids, _ = publish_all(bench, photos)
    started_s, cpu_started_s = time.time(), worker_cpu_s(supervisor)
    control.add_consumer(ANALYSIS_QUEUE, reply=True, limit=workers, timeout=10)
    drain = images_per_s(bench, ids, started_s)
    cpu_s = worker_cpu_s(supervisor) - cpu_started_s
    return {
        "end_to_end": end_to_end,
        "drain": drain,
        "publish": len(photos) / publish_s,
        "cpu_s_per_image": cpu_s / len(photos),
    }


def latency(
    bench: Bench, photos: Sequence[bytes], options: dict[str, Any], rate: float
) -> dict[str, float]:
    """Publish-to-event latency at a steady ``rate``, one worker process."""
    seconds = options["seconds"]
    count = int(rate * seconds)
    chosen = [photos[i % len(photos)] for i in range(count)]
    with running_worker(bench, options | {"processes": 1}):
        ids = bench.captures(chosen)
        published: dict[int, float] = {}
        start_s = time.monotonic()
        for n, (capture_id, data) in enumerate(zip(ids, chosen, strict=True)):
            time.sleep(max(0.0, start_s + n / rate - time.monotonic()))
            published[capture_id] = bench.publish(capture_id, data)
        bench.events.wait_for(ids, timeout_s=600)
    waits_ms = np.array(
        [(bench.events.arrived_s[c] - published[c]) * 1000 for c in ids]
    )
    return {
        "rate_per_s": rate,
        "images": count,
        "p50_ms": round(float(np.percentile(waits_ms, 50)), 1),
        "p99_ms": round(float(np.percentile(waits_ms, 99)), 1),
        "max_ms": round(float(waits_ms.max()), 1),
    }


# -- the run ---------------------------------------------------------------


@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str]]:
    database_url = os.environ.get("FARMEYE_BENCH_DATABASE_URL")
    redis_url = os.environ.get("FARMEYE_BENCH_REDIS_URL")
    if database_url and redis_url:
        yield database_url, redis_url
        return
    from farmeye.embedded import EmbeddedServices

    with tempfile.TemporaryDirectory(prefix="farmeye-bench-") as folder:
        services = EmbeddedServices(Path(folder)).start()
        try:
            yield services.database_url, services.redis_url
        finally:
            services.stop()


def parse_arguments(argv: Sequence[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--model", default="full")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--batch-wait-ms", type=float, default=None)
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--rates", default="20,5")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="Celery runs between bare runs"
    )
    parser.add_argument("--frame-size", default="1280x960")
    arguments = vars(parser.parse_args(argv))
    from workers.settings import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_WAIT_MS

    device = arguments["device"]
    arguments["batch_size"] = arguments["batch_size"] or DEFAULT_BATCH_SIZE[device]
    if arguments["batch_wait_ms"] is None:
        arguments["batch_wait_ms"] = DEFAULT_BATCH_WAIT_MS[device]
    arguments["process_counts"] = [int(p) for p in arguments["processes"].split(",")]
    return arguments


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_arguments(argv)
    width, height = (int(v) for v in options["frame_size"].split("x"))
    distinct = camera_frames(DISTINCT_FRAMES, (width, height))
    photos = [distinct[i % DISTINCT_FRAMES] for i in range(options["images"])]

    runs: dict[str, dict[str, Any]] = {}
    with servers() as (database_url, redis_url):
        bench = Bench(database_url, redis_url)
        for processes in options["process_counts"]:
            runs[str(processes)] = compare(bench, photos, options, processes)
        latency_result = [
            latency(bench, photos, options, float(rate))
            for rate in options["rates"].split(",")
        ]
        heatmap_share = bench.events.heatmaps / max(1, len(bench.events.arrived_s))
        bench.events.close()

    print(json.dumps(report(options, runs, latency_result, heatmap_share), indent=2))


def compare(
    bench: Bench, photos: Sequence[bytes], options: dict[str, Any], processes: int
) -> dict[str, Any]:
    """Bare and Celery runs taking turns, ``rounds`` times, bare first and last.

    Each Celery run is compared with the mean of the bare runs just before and
    after it, so that drift in the machine's load cancels out; the medians
    over the rounds are the figures, the lists show the spread.
    """
    run = options | {"processes": processes}
    bench.options = run
    bare = [bare_throughput(photos, run)]
    celery = []
    with running_worker(bench, run) as supervisor:
        warmup, _ = publish_all(bench, photos[:WARMUP_IMAGES])
        bench.events.wait_for(warmup, timeout_s=600)
        for _ in range(options["rounds"]):
            celery.append(celery_throughput(bench, supervisor, photos))
            bare.append(bare_throughput(photos, run))
    limits = [(before[0] + after[0]) / 2 for before, after in pairwise(bare)]
    ratios = {
        way: [c[way] / limit for c, limit in zip(celery, limits, strict=True)]
        for way in ("drain", "end_to_end")
    }
    return {
        "bare_images_per_s": _median([b[0] for b in bare]),
        "bare_runs": [round(b[0], 1) for b in bare],
        "celery_drain_images_per_s": _median([c["drain"] for c in celery]),
        "celery_end_to_end_images_per_s": _median([c["end_to_end"] for c in celery]),
        "publish_images_per_s": _median([c["publish"] for c in celery]),
        "ratio_drain": round(float(np.median(ratios["drain"])), 3),
        "ratio_end_to_end": round(float(np.median(ratios["end_to_end"])), 3),
        "ratios_drain": [round(r, 3) for r in ratios["drain"]],
        "ratios_end_to_end": [round(r, 3) for r in ratios["end_to_end"]],
        "bare_cpu_ms_per_image": round(bare[0][1] * 1000, 2),
        "worker_cpu_ms_per_image": _median(
            [c["cpu_s_per_image"] * 1000 for c in celery], 2
        ),
    }


def _median(values: Sequence[float], digits: int = 1) -> float:
    return round(float(np.median(values)), digits)


def report(
    options: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    latency_result: list[dict[str, float]],
    heatmap_share: float,
) -> dict[str, Any]:
    from farmeye.models import resolve

    spec = resolve(options["model"])
    counts = options["process_counts"]
    scaling = {}
    if len(counts) > 1:
        low, high = str(counts[0]), str(counts[-1])
        for key in ("bare", "celery_drain", "celery_end_to_end"):
            name = f"{key}_images_per_s"
            scaling[key] = round(runs[high][name] / runs[low][name], 2)
    return {
        "benchmark": "analysis",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "device": options["device"],
        },
        "model": {"version": spec.version, "input_size": spec.input_size},
        "images": options["images"],
        "frame_size": options["frame_size"],
        "batch_size": options["batch_size"],
        "batch_wait_ms": options["batch_wait_ms"],
        "mixed_precision": options["mixed_precision"],
        "heatmap_share": round(heatmap_share, 3),
        "throughput": runs,
        "scaling": scaling,
        "latency": latency_result,
    }


if __name__ == "__main__":
    main()
