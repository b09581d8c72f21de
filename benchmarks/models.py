"""Speed of the shipped models on this machine; prints one JSON object.

Triage is timed on one thread, as on one core of a Pi or one process of the
hub's pool: decode + preprocess of a 224 px JPEG and of a 1280 x 960 camera
frame, then the int8 forward pass. The bare limit in the same run is the
forward pass alone on an already prepared input.

    python benchmarks/models.py [--repeats N] [--full]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from farmeye.imaging import preprocess
from farmeye.models import load_card
from farmeye.triage import TriageModel


def frame(width: int, height: int) -> bytes:
    rng = np.random.default_rng(1)
    pixels = rng.integers(60, 160, (height // 8, width // 8, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def median_ms(run: Callable[[], object], repeats: int) -> float:
    for _ in range(5):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def triage_figures(repeats: int) -> dict[str, object]:
    model = TriageModel.shipped(threads=1)
    size = model.input_size
    small, camera = frame(224, 224), frame(1280, 960)
    prepared = preprocess(small, size)
    bare = median_ms(lambda: model.scores(prepared), repeats)
    return {
        "input_size": size,
        "file_bytes": model.spec.path.stat().st_size,
        "invoke_ms_1_thread": bare,
        "preprocess_224_jpeg_ms": median_ms(lambda: preprocess(small, size), repeats),
        "end_to_end_224_jpeg_ms": median_ms(lambda: model.classify(small), repeats),
        "end_to_end_1280x960_jpeg_ms": median_ms(
            lambda: model.classify(camera), repeats
        ),
    }


def full_figures(repeats: int) -> dict[str, object]:
    from farmeye.analysis import FullModel

    model = FullModel.shipped()
    size = model.input_size
    batch = np.stack([preprocess(frame(224, 224), size)] * 16)
    per_batch = median_ms(lambda: model.scores(batch), max(repeats // 20, 3))
    return {
        "input_size": size,
        "batch": len(batch),
        "batch_ms": per_batch,
        "images_per_s": round(len(batch) * 1000 / per_batch, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--full", action="store_true", help="also time the full model")
    args = parser.parse_args()
    result: dict[str, object] = {
        "model_version": load_card().version,
        "triage": triage_figures(args.repeats),
    }
    if args.full:
        result["full"] = full_figures(args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
