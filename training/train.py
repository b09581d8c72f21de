"""``farmeye train``: from a folder of labelled photos to shipped models.

The steps, each resumable:

1. split the photos by near-duplicate group into train, calibration and
   validation sets;
2. cache the frozen stem's output for several augmented views of each photo;
3. fit the full model's top, then calibrate its temperature;
4. distil the triage model from the full model and quantise it to int8;
5. evaluate the exported files end to end and write the model card.
"""

from __future__ import annotations

import json
import logging
import platform
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from farmeye import __version__
from farmeye.labels import LABELS
from training import card, litert, plots
from training.dataset import (
    Sample,
    class_weights,
    dataset_hash,
    load_samples,
    split_by_group,
)
from training.features import CacheSpec, FeatureCache, build_cache
from training.loop import Stage, ViewBatches, fit, predict_logits
from training.metrics import fit_temperature, softmax
from training.model import (
    STEM_LAYER,
    Architecture,
    full_architecture,
    triage_architecture,
)

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass
class TrainConfig:
    """Everything that decides what a training run produces."""

    dataset_dir: Path
    out_dir: Path
    backbone_weights: str = "imagenet"
    epochs: int = 16
    head_epochs: int = 4
    triage_epochs: int = 24
    """Fine-tuning epochs of the triage model (its epochs cost a third)."""
    ema_momentum: float | None = 0.995
    """Fine-tuning ends with the moving average of the weights (None: off)."""
    seed: int = 0
    views: int = 10
    full_size: int = 224
    full_views: tuple[str, ...] = ("identity", "flip_h", "flip_v")
    """Views the full model averages at inference (farmeye.models.VIEWS)."""
    triage_size: int = 128
    stem_layer: str = STEM_LAYER
    """Last frozen backbone layer of both models (training.model.STEM_LAYERS)."""
    val_share: float = 0.15
    calibration_share: float = 0.10
    batch_size: int = 64
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    distill_weight: float = 0.5
    target_sick_recall: float = 0.995
    per_label_limit: int | None = None
    cache_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        values = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


@dataclass
class Splits:
    train: list[Sample]
    calibration: list[Sample]
    validation: list[Sample]


def split(config: TrainConfig) -> Splits:
    """Three group-disjoint sets; a label limit keeps tiny runs tiny."""
    samples = load_samples(config.dataset_dir)
    if config.per_label_limit is not None:
        rng = random.Random(config.seed)
        limited = []
        for label in LABELS:
            mine = [s for s in samples if s.label == label]
            rng.shuffle(mine)
            limited.extend(mine[: config.per_label_limit])
        samples = sorted(limited, key=lambda s: str(s.path))
    rest, validation = split_by_group(samples, config.val_share, config.seed)
    share = config.calibration_share / (1 - config.val_share)
    train, calibration = split_by_group(rest, share, config.seed + 1)
    return Splits(train, calibration, validation)


def run(config: TrainConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Train, calibrate, export and evaluate both models; return the metrics."""
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = split(config)
    logger.info(
        "photos: %d train, %d calibration, %d validation",
        len(splits.train),
        len(splits.calibration),
        len(splits.validation),
    )

    full = full_architecture(
        config.full_size, config.backbone_weights, stem_layer=config.stem_layer
    )
    triage = triage_architecture(
        config.triage_size, config.backbone_weights, stem_layer=config.stem_layer
    )
    caches = _caches(
        config, splits, {config.full_size: full, config.triage_size: triage}, progress
    )

    full_history = _fit_full(config, full, caches, out)
    full_temperature = _calibrate(full, caches["calibration"], config.full_size)
    _scale_logits(full, full_temperature)

    triage_history = _fit_triage(config, full, triage, caches, out)
    triage_temperature = _calibrate(triage, caches["calibration"], config.triage_size)
    _scale_logits(triage, triage_temperature)

    files = card.export(out, full, triage, splits, config, progress=progress)
    params = config.resolved() | {
        "farmeye_version": __version__,
        "keras_version": keras.__version__,
        "python": platform.python_version(),
        "dataset_hash": dataset_hash(
            splits.train + splits.calibration + splits.validation
        ),
        "photos": {
            "train": len(splits.train),
            "calibration": len(splits.calibration),
            "validation": len(splits.validation),
        },
    }
    # A first card lets the evaluation load the files as production does.
    card.write_card(out, params, {}, files)
    metrics = card.evaluate_exports(out, splits)
    metrics["temperature"] = {"full": full_temperature, "triage": triage_temperature}
    metrics["train_seconds"] = round(time.monotonic() - started, 1)
    card.write_card(out, params, metrics, files)

    (out / "params.json").write_text(json.dumps(params, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    history = {"full": full_history, "triage": triage_history}
    (out / "history.json").write_text(json.dumps(history, indent=1))
    plots.write_all(out / "plots", history, metrics)
    return metrics


def _caches(
    config: TrainConfig,
    splits: Splits,
    archs: dict[int, Architecture],
    progress: Progress | None,
) -> dict[str, FeatureCache]:
    """Stem features for every split; only training photos get augmented views."""
    stems = {
        size: litert.float_runner(_scaled_stem(arch)) for size, arch in archs.items()
    }
    folder = config.cache_dir or (Path(config.out_dir) / "cache")
    sizes = tuple(sorted(archs, reverse=True))
    caches = {}
    for name, samples, views in (
        ("train", splits.train, config.views),
        ("calibration", splits.calibration, 1),
        ("validation", splits.validation, 1),
    ):
        spec = CacheSpec(
            tuple(samples),
            views,
            sizes,
            config.seed,
            config.backbone_weights,
            config.stem_layer,
        )
        report = None
        if progress is not None:
            report = _named(progress, f"features ({name})")
        caches[name] = build_cache(spec, folder, stems, report)
    return caches


def _named(progress: Progress, name: str) -> Callable[[int, int], None]:
    return lambda done, total: progress(name, done, total)


def _scaled_stem(arch: Architecture) -> keras.Model:
    image = keras.Input((arch.size, arch.size, 3))
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(image)
    return keras.Model(image, arch.stem(scaled))


def _weights(cache: FeatureCache) -> np.ndarray:
    """Per-photo loss weights that make every label count alike."""
    per_label = class_weights(LABELS[int(y)] for y in cache.labels)
    return np.array([per_label[int(y)] for y in cache.labels], dtype=np.float32)


def _stages(config: TrainConfig, epochs: int) -> list[Stage]:
    return [
        Stage("head", config.head_epochs, config.learning_rate, train_top=False),
        Stage(
            "fine_tune",
            epochs,
            config.fine_tune_learning_rate,
            train_top=True,
            ema_momentum=config.ema_momentum,
        ),
    ]


def _fit_full(
    config: TrainConfig, full: Architecture, caches: dict[str, FeatureCache], out: Path
) -> list[dict[str, Any]]:
    train = caches["train"]
    onehot = keras.utils.to_categorical(train.labels, len(LABELS))
    batches = ViewBatches(
        train.features[config.full_size],
        onehot,
        _weights(train),
        config.batch_size,
        config.seed,
    )
    val = caches["validation"]
    return fit(
        full,
        _stages(config, config.epochs),
        batches,
        (np.asarray(val.features[config.full_size][:, 0], np.float32), val.labels),
        out / "checkpoints",
    )


def _fit_triage(
    config: TrainConfig,
    full: Architecture,
    triage: Architecture,
    caches: dict[str, FeatureCache],
    out: Path,
) -> list[dict[str, Any]]:
    """Distil: the triage model learns the full model's scores and the labels."""
    train = caches["train"]
    teacher = _teacher_scores(full, train.features[config.full_size])
    onehot = keras.utils.to_categorical(train.labels, len(LABELS))[:, None, :]
    mix = config.distill_weight
    targets = (1 - mix) * onehot + mix * teacher
    batches = ViewBatches(
        train.features[config.triage_size],
        targets,
        _weights(train),
        config.batch_size,
        config.seed,
    )
    val = caches["validation"]
    return fit(
        triage,
        _stages(config, config.triage_epochs),
        batches,
        (np.asarray(val.features[config.triage_size][:, 0], np.float32), val.labels),
        out / "checkpoints",
        label_smoothing=0.0,
    )


def _teacher_scores(full: Architecture, features: np.ndarray) -> np.ndarray:
    """The full model's scores for every cached view, softened (T = 2)."""
    photos, views = features.shape[:2]
    flat = features.reshape(photos * views, *features.shape[2:])
    logits = predict_logits(full, flat)
    return softmax(logits / 2.0).reshape(photos, views, len(LABELS))


def _calibrate(arch: Architecture, cache: FeatureCache, size: int) -> float:
    """Fit the temperature on the calibration photos (never seen in training)."""
    logits = predict_logits(arch, cache.features[size][:, 0])
    temperature = fit_temperature(logits, cache.labels)
    logger.info("%s temperature %.3f", arch.kind, temperature)
    return temperature


def _scale_logits(arch: Architecture, temperature: float) -> None:
    """Bake ``1 / temperature`` into the logits layer: calibration at no cost."""
    layer = arch.logits_layer()
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel / temperature, bias / temperature])
