"""The full model on TensorFlow: the diagnosis of record.

Loaded by analysis workers and by the offline ``diagnose`` and ``evaluate``
commands. Importing this module does not import TensorFlow; loading a model
does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from farmeye.imaging import preprocess
from farmeye.labels import LABELS
from farmeye.models import ModelError, ModelSpec, load_card


def view_of(batch: np.ndarray, view: str) -> np.ndarray:
    """One of :data:`farmeye.models.VIEWS` of a (n, h, w, c) batch."""
    if view == "identity":
        return batch
    if view == "flip_h":
        return batch[:, :, ::-1]
    if view == "flip_v":
        return batch[:, ::-1]
    if view == "rot180":
        return batch[:, ::-1, ::-1]
    raise ModelError(f"unknown view {view!r}")


class FullModel:
    """The Keras full model: batches of preprocessed photos in, scores out."""

    def __init__(self, spec: ModelSpec) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            import keras
        except ImportError:
            raise ModelError(
                "full analysis needs TensorFlow: pip install 'farmeye[worker]'"
            ) from None
        try:
            self.keras_model: Any = keras.models.load_model(spec.path, compile=False)
        except Exception as exc:  # Keras raises many types for a bad file
            raise ModelError(
                f"full model {spec.path} cannot be loaded: {exc}"
            ) from None
        self.spec = spec
        self.input_size = spec.input_size
        self.version = spec.version

    @classmethod
    def shipped(cls) -> FullModel:
        return cls(load_card().model("full"))

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Scores over :data:`LABELS` for a (n, size, size, 3) uint8 batch,
        averaged over the model's views, in one forward pass."""
        if len(batch) == 0:
            return np.zeros((0, len(LABELS)), np.float32)
        views = self.spec.views
        stacked = np.concatenate([view_of(batch, name) for name in views])
        raw = np.asarray(
            self.keras_model(stacked.astype(np.float32), training=False), np.float32
        )
        return np.asarray(raw.reshape(len(views), len(batch), -1).mean(axis=0))

    def classify_many(
        self, photos: Sequence[bytes]
    ) -> list[tuple[str, dict[str, float]]]:
        """Decode and classify photos; raises ImageError for the first bad one."""
        batch = np.stack([preprocess(data, self.input_size) for data in photos])
        return [
            (
                LABELS[int(row.argmax())],
                {k: round(float(v), 4) for k, v in zip(LABELS, row, strict=True)},
            )
            for row in self.scores(batch)
        ]
