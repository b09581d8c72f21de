"""Stem feature cache: the frozen backbone run once per photo view.

Each training photo is seen as ``views`` versions (view 0 is the production
preprocessing, the others random augmentations); each version goes through the
frozen stem at every model input size, and the result is stored as float16
arrays in a folder. Training the tops then costs minutes instead of hours. The
stem runs on LiteRT, several times faster than TensorFlow on a CPU.

A cache is keyed by everything that changes its content, so an interrupted or
repeated run reuses what is already there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from farmeye.imaging import open_image, preprocess, trim_white_border
from farmeye.labels import label_index
from training.augment import random_view
from training.dataset import Sample

logger = logging.getLogger(__name__)

CHUNK = 64
"""Views decoded per worker task; large enough to amortise the process hop."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds: the photos, views per photo and input sizes."""

    samples: tuple[Sample, ...]
    views: int
    sizes: tuple[int, ...]
    seed: int
    weights: str
    stem_layer: str

    def key(self) -> str:
        text = json.dumps(
            {
                "samples": [(str(s.path), s.label) for s in self.samples],
                "views": self.views,
                "sizes": self.sizes,
                "seed": self.seed,
                "weights": self.weights,
                "stem_layer": self.stem_layer,
                "format": 2,
            }
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class FeatureCache:
    """Cached stem outputs: ``features[size]`` is (photos, views, H, W, C)."""

    features: dict[int, np.ndarray]
    labels: np.ndarray

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


def _views_of(task: tuple[str, int, int, tuple[int, ...]]) -> list[list[np.ndarray]]:
    """Decode one photo into its views at every size (runs in a worker)."""
    path, views, seed, sizes = task
    data = Path(path).read_bytes()
    # View 0 is exactly the production input, draft-mode decode included.
    out = [[preprocess(data, size) for size in sizes]]
    image = trim_white_border(open_image(data))
    rng = random.Random(seed)
    for _ in range(views - 1):
        out.append(random_view(image, sizes, rng))
    return out


def build_cache(
    spec: CacheSpec,
    folder: Path,
    stems: dict[int, Callable[[np.ndarray], np.ndarray]],
    progress: Callable[[int, int], None] | None = None,
) -> FeatureCache:
    """Load the cache for ``spec`` from ``folder``, computing it if absent."""
    target = folder / spec.key()
    done = target / "done.json"
    if done.is_file():
        logger.info("reusing feature cache %s", target)
        return _load(target, spec.sizes)

    target.mkdir(parents=True, exist_ok=True)
    n = len(spec.samples)
    arrays: dict[int, np.memmap[Any, Any]] = {}
    for size in spec.sizes:
        shape = (n, spec.views, *_stem_shape(stems[size], size))
        arrays[size] = np.lib.format.open_memmap(
            target / f"features_{size}.npy", mode="w+", dtype=np.float16, shape=shape
        )
    labels = np.array([label_index(s.label) for s in spec.samples], dtype=np.int32)
    np.save(target / "labels.npy", labels)

    for index, views in enumerate(_decoded(spec)):
        for size in spec.sizes:
            batch = np.stack([view[spec.sizes.index(size)] for view in views])
            arrays[size][index] = stems[size](batch).astype(np.float16)
        if progress is not None:
            progress(index + 1, n)
    for array in arrays.values():
        array.flush()
    done.write_text(json.dumps({"photos": n, "views": spec.views}))
    return _load(target, spec.sizes)


def _decoded(spec: CacheSpec) -> Iterator[list[list[np.ndarray]]]:
    tasks = [
        (str(sample.path), spec.views, spec.seed * 1_000_003 + i, spec.sizes)
        for i, sample in enumerate(spec.samples)
    ]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes=2) as pool:
        yield from pool.imap(_views_of, tasks, chunksize=CHUNK // max(spec.views, 1))


def _stem_shape(run: Callable[[np.ndarray], np.ndarray], size: int) -> tuple[int, ...]:
    return tuple(run(np.zeros((1, size, size, 3), np.uint8)).shape[1:])


def _load(target: Path, sizes: Sequence[int]) -> FeatureCache:
    features = {
        size: np.load(target / f"features_{size}.npy", mmap_mode="r") for size in sizes
    }
    return FeatureCache(features, np.load(target / "labels.npy"))
