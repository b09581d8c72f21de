"""Fitting a model top on cached features: stages, weight averaging, resuming."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from farmeye.labels import LABELS
from training.loop import Stage, ViewBatches, fit
from training.model import Architecture, triage_architecture

SIZE = 32
PHOTOS = 24


class WeightLog(keras.callbacks.Callback):  # type: ignore[misc]
    """Copies the trainable weights after every optimiser step."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        self.steps.append([np.array(w) for w in self.model.trainable_weights])


@pytest.fixture()
def arch() -> Architecture:
    keras.utils.set_random_seed(0)
    return triage_architecture(SIZE, "random")


def batches(arch: Architecture) -> ViewBatches:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(PHOTOS, 2, *arch.stem_shape)).astype(np.float16)
    labels = np.arange(PHOTOS) % len(LABELS)
    onehot = keras.utils.to_categorical(labels, len(LABELS))
    return ViewBatches(features, onehot, np.ones(PHOTOS, np.float32), 8, seed=0)


def validation(arch: Architecture) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(8, *arch.stem_shape)).astype(np.float32)
    return features, np.arange(8) % len(LABELS)


def test_fine_tuning_ends_with_the_moving_average_of_its_weights(
    arch: Architecture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """With ema_momentum the stage's final weights are the average of its steps."""
    log = WeightLog()
    original_fit = arch.trainer.fit

    def fit_with_log(*args: object, **kwargs: object) -> object:
        kwargs["callbacks"] = [*kwargs["callbacks"], log]  # type: ignore[list-item]
        return original_fit(*args, **kwargs)

    monkeypatch.setattr(arch.trainer, "fit", fit_with_log)
    momentum = 0.8
    stage = Stage("fine_tune", 2, 1e-2, train_top=True, ema_momentum=momentum)
    fit(arch, [stage], batches(arch), validation(arch), tmp_path)

    expected = log.steps[0]
    for step in log.steps[1:]:
        pairs = zip(expected, step, strict=True)
        expected = [momentum * a + (1 - momentum) * w for a, w in pairs]
    final = [np.array(w) for w in arch.trainer.trainable_weights]
    for got, want in zip(final, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # The average is not simply the last step's weights.
    assert any(not np.allclose(g, s) for g, s in zip(final, log.steps[-1], strict=True))


def test_resumed_run_starts_from_the_averaged_weights(
    arch: Architecture, tmp_path: Path
):
    """The checkpoint written after a stage holds its final (averaged) weights."""
    stage = Stage("fine_tune", 1, 1e-2, train_top=True, ema_momentum=0.8)
    fit(arch, [stage], batches(arch), validation(arch), tmp_path)
    final = [np.array(w) for w in arch.trainer.weights]

    keras.utils.set_random_seed(1)
    again = triage_architecture(SIZE, "random")
    history = fit(again, [stage], batches(again), validation(again), tmp_path)
    assert [entry["stage"] for entry in history] == ["fine_tune"]
    for got, want in zip(again.trainer.weights, final, strict=True):
        np.testing.assert_array_equal(np.array(got), want)
