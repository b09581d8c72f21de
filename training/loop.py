"""Fitting a model top on cached stem features, resumably."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from farmeye.labels import LABELS
from training.model import Architecture

logger = logging.getLogger(__name__)


class ViewBatches(keras.utils.PyDataset):  # type: ignore[misc]
    """Batches of cached features, one random view of each photo per epoch."""

    def __init__(
        self,
        features: np.ndarray,
        targets: np.ndarray,
        weights: np.ndarray,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.features = features
        self.targets = targets
        self.weights = weights
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(features))
        self.views = np.zeros(len(features), dtype=np.int64)
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.features) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.sort(
            self.order[index * self.batch_size : (index + 1) * self.batch_size]
        )
        views = self.views[rows]
        x = np.asarray(self.features[rows, views], dtype=np.float32)
        y = self.targets[rows, views] if self.targets.ndim == 3 else self.targets[rows]
        return x, y.astype(np.float32), self.weights[rows]

    def on_epoch_end(self) -> None:
        self.rng.shuffle(self.order)
        self.views = self.rng.integers(0, self.features.shape[1], len(self.features))


@dataclass
class Stage:
    """One phase of training: which layers learn, for how long, how fast."""

    name: str
    epochs: int
    learning_rate: float
    train_top: bool
    ema_momentum: float | None = None
    """Keep an exponential moving average of the weights and end the stage
    with it (None: end with the last step's weights). A stage resumed midway
    averages from the epoch it resumed at."""


class Checkpoint(keras.callbacks.Callback):  # type: ignore[misc]
    """Saves weights and progress after every epoch so a run can resume."""

    def __init__(
        self, folder: Path, kind: str, stage: str, history: list[dict[str, Any]]
    ) -> None:
        super().__init__()
        self.weights = folder / f"{kind}.weights.h5"
        self.state = folder / f"{kind}.json"
        self.stage = stage
        self.history = history

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        entry = {"stage": self.stage, "epoch": epoch + 1}
        entry.update({k: round(float(v), 5) for k, v in (logs or {}).items()})
        self.history.append(entry)
        self.model.save_weights(self.weights)
        self.state.write_text(json.dumps({"history": self.history}, indent=1))
        logger.info("%s", entry)


def fit(
    arch: Architecture,
    stages: list[Stage],
    train: ViewBatches,
    validation: tuple[np.ndarray, np.ndarray],
    folder: Path,
    label_smoothing: float = 0.05,
) -> list[dict[str, Any]]:
    """Run ``stages`` in order, resuming after the last epoch saved in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    history = _resume(arch, folder)
    for stage in stages:
        done = sum(1 for entry in history if entry["stage"] == stage.name)
        if done >= stage.epochs:
            continue
        arch.set_top_trainable(stage.train_top)
        steps = len(train) * stage.epochs
        schedule = keras.optimizers.schedules.CosineDecay(
            stage.learning_rate, decay_steps=steps, alpha=0.05
        )
        optimizer = keras.optimizers.Adam(
            schedule,
            use_ema=stage.ema_momentum is not None,
            ema_momentum=stage.ema_momentum or 0.99,
        )
        arch.trainer.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=label_smoothing
            ),
            metrics=["accuracy"],
        )
        # Fast-forward the schedule so a resumed stage keeps its learning rate.
        arch.trainer.optimizer.iterations.assign(done * len(train))
        val_x, val_y = validation
        arch.trainer.fit(
            train,
            epochs=stage.epochs,
            initial_epoch=done,
            validation_data=(val_x, keras.utils.to_categorical(val_y, len(LABELS))),
            callbacks=[Checkpoint(folder, arch.kind, stage.name, history)],
            verbose=0,
        )
        # fit() ends by writing the averaged weights into the model; keep
        # them, not the last step's, for a run that resumes after this stage.
        arch.trainer.save_weights(folder / f"{arch.kind}.weights.h5")
    return history


def _resume(arch: Architecture, folder: Path) -> list[dict[str, Any]]:
    state = folder / f"{arch.kind}.json"
    weights = folder / f"{arch.kind}.weights.h5"
    if not (state.is_file() and weights.is_file()):
        return []
    arch.trainer.load_weights(weights)
    history: list[dict[str, Any]] = json.loads(state.read_text())["history"]
    logger.info("resuming %s after %d epochs", arch.kind, len(history))
    return history


def predict_logits(
    arch: Architecture, features: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Logits of ``arch`` on stem features of shape (n, H, W, C)."""
    out = []
    for start in range(0, len(features), batch_size):
        chunk = np.asarray(features[start : start + batch_size], dtype=np.float32)
        out.append(np.asarray(arch.trainer(chunk, training=False)))
    return np.concatenate(out) if out else np.zeros((0, len(LABELS)), np.float32)
