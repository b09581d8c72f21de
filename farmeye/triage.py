"""The triage model on LiteRT: a quick verdict on one CPU core.

Used by the hub's triage pool, the edge agent (when it can afford it) and the
offline commands. Needs only ``ai-edge-litert`` and numpy, never TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from farmeye.imaging import preprocess
from farmeye.labels import HEALTHY, LABELS
from farmeye.models import ModelError, ModelSpec, load_card

HEALTHY_INDEX = LABELS.index(HEALTHY)


class TriageModel:
    """An int8 TFLite classifier with the triage rule of its card."""

    def __init__(self, spec: ModelSpec, threads: int = 1) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ModelError(
                "triage needs the LiteRT runtime: pip install 'farmeye[triage]'"
            ) from None
        try:
            self._interpreter = Interpreter(
                model_path=str(spec.path), num_threads=threads
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"triage model {spec.path} cannot be loaded: {exc}"
            ) from None
        source = self._interpreter.get_input_details()[0]
        sink = self._interpreter.get_output_details()[0]
        self._source = source["index"]
        self._sink = sink["index"]
        self._out_scale, self._out_zero = sink["quantization"]
        self.spec = spec
        self.input_size = spec.input_size
        self.version = spec.version
        self.healthy_threshold = spec.healthy_threshold or 0.5

    @classmethod
    def shipped(cls, threads: int = 1) -> TriageModel:
        return cls(load_card().model("triage"), threads)

    @classmethod
    def from_folder(cls, folder: Path, threads: int = 1) -> TriageModel:
        return cls(load_card(folder).model("triage"), threads)

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """Scores over :data:`LABELS` for one preprocessed uint8 image."""
        self._interpreter.set_tensor(self._source, pixels[None])
        self._interpreter.invoke()
        raw: np.ndarray = self._interpreter.get_tensor(self._sink)[0]
        raw = raw.astype(np.float32)
        if self._out_scale:
            raw = (raw - self._out_zero) * self._out_scale
        return raw

    def label(self, scores: np.ndarray) -> str:
        """The triage rule: healthy only when its score reaches the threshold."""
        if scores[HEALTHY_INDEX] >= self.healthy_threshold:
            return HEALTHY
        sick = scores.copy()
        sick[HEALTHY_INDEX] = -1.0
        return LABELS[int(sick.argmax())]

    def classify(self, data: bytes) -> tuple[str, dict[str, float]]:
        """Decode photo bytes and return (label, scores by label)."""
        scores = self.scores(preprocess(data, self.input_size))
        return self.label(scores), scores_by_label(scores)


def scores_by_label(scores: np.ndarray) -> dict[str, float]:
    return {label: round(float(s), 4) for label, s in zip(LABELS, scores, strict=True)}
