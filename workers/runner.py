"""The full model on one device: batches of photos in, verdicts and maps out.

:class:`ModelRunner` loads the model with :class:`farmeye.analysis.FullModel`
(the same loader as ``farmeye diagnose``), cuts it at its last convolutional
feature map (the output of the ``<kind>_top`` block) into a feature part and a
head, compiles both into one graph, warms it up and checks that the two parts
together still give the model's own scores. The cut is what makes Grad-CAM
cheap: the heatmaps need gradients through the small head only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from farmeye.analysis import FullModel, view_of
from farmeye.labels import HEALTHY, LABELS
from farmeye.models import ModelError, ModelSpec
from workers.heatmap import grad_cam
from workers.settings import Device

logger = logging.getLogger(__name__)

FEATURE_BLOCK_SUFFIX = "_top"
"""The block whose output is the last feature map: ``full_top`` for ``full``."""

SPLIT_TOLERANCE = 2e-3
"""Largest score difference allowed between the cut model and the original."""

MIXED_POLICY = "mixed_float16"

HEALTHY_INDEX = LABELS.index(HEALTHY)


class DeviceError(RuntimeError):
    """The requested device cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Inference:
    """The model's verdict on one photo."""

    label: str
    scores: dict[str, float]
    cam: np.ndarray | None
    """Grad-CAM map (h, w) in [0, 1] for the predicted class; None if healthy."""


def configure_device(
    device: Device,
    *,
    index: int = 0,
    cpu_threads: int | None = None,
    config: Any = None,
) -> str:
    """Make TensorFlow use ``device``; call before the model loads.

    A GPU process takes GPU ``index`` modulo the GPUs it sees, with memory
    growth on so that a second process (a rolling restart) fits beside it.
    ``config`` is ``tf.config`` unless a test passes a stand-in.
    """
    if config is None:
        import tensorflow as tf

        config = tf.config
    gpus = config.list_physical_devices("GPU")
    if device == "cpu":
        if gpus:
            config.set_visible_devices([], "GPU")
        if cpu_threads:
            config.threading.set_intra_op_parallelism_threads(cpu_threads)
        return "cpu"
    if not gpus:
        raise DeviceError(
            "--device gpu was asked for, but TensorFlow sees no GPU; install the "
            "GPU build (pip install 'tensorflow[and-cuda]') and its driver, or "
            "run with --device cpu"
        )
    gpu = gpus[index % len(gpus)]
    config.set_visible_devices([gpu], "GPU")
    config.experimental.set_memory_growth(gpu, True)
    return str(gpu.name)


def with_mixed_precision(model: Any) -> Any:
    """A copy of ``model`` computing in float16, its final softmax in float32."""
    import keras

    config = model.get_config()
    last = model.layers[-1].name
    for layer in config["layers"]:
        if layer["config"].get("name") != last:
            _set_policy(layer, MIXED_POLICY)
    mixed = keras.Model.from_config(config)
    mixed.set_weights(model.get_weights())
    return mixed


def _set_policy(node: Any, policy: str) -> None:
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy":
            node["config"]["name"] = policy
            return
        for value in node.values():
            _set_policy(value, policy)
    elif isinstance(node, list):
        for value in node:
            _set_policy(value, policy)


def _tf_view(pixels: Any, view: str) -> Any:
    """:func:`farmeye.analysis.view_of` in TensorFlow, for a (n, h, w, c) batch."""
    import tensorflow as tf

    axes = {"identity": [], "flip_h": [2], "flip_v": [1], "rot180": [1, 2]}[view]
    return tf.reverse(pixels, axes) if axes else pixels


def split_at_features(model: Any, block: str) -> tuple[list[Any], list[Any]]:
    """The model's layers as two chains: up to ``block`` inclusive, and after.

    Nested models that contain ``block`` are opened up (older exports nest the
    whole trainer); others stay whole. A trailing Softmax is left out of the
    head, which then gives logits, as Grad-CAM wants.
    """
    import keras

    if not _contains(model, block):
        raise ModelError(
            f"model {model.name} has no {block!r} block to take heatmaps from; "
            "it was not built by `farmeye train`"
        )
    steps = _chain(model, block)
    cut = next(i for i, layer in enumerate(steps) if layer.name == block) + 1
    head = steps[cut:]
    if head and isinstance(head[-1], keras.layers.Softmax):
        head = head[:-1]
    return steps[:cut], head


def _chain(model: Any, block: str) -> list[Any]:
    import keras

    steps: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model) and layer.name != block:
            if _contains(layer, block):
                steps.extend(_chain(layer, block))
                continue
        steps.append(layer)
    return steps


def _contains(model: Any, block: str) -> bool:
    import keras

    return any(
        layer.name == block
        or (isinstance(layer, keras.Model) and _contains(layer, block))
        for layer in model.layers
    )


def _apply(layers: Sequence[Any]) -> Callable[[Any], Any]:
    def run(x: Any) -> Any:
        for layer in layers:
            x = layer(x, training=False)
        return x

    return run


class ModelRunner:
    """The full model compiled for one device, with Grad-CAM for sick verdicts."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        device: Device = "cpu",
        mixed_precision: bool = False,
        device_index: int = 0,
        cpu_threads: int | None = None,
    ) -> None:
        started_s = time.monotonic()
        self.device = configure_device(
            device, index=device_index, cpu_threads=cpu_threads
        )
        keras_model = FullModel(spec).keras_model
        if mixed_precision:
            keras_model = with_mixed_precision(keras_model)
        self.version = spec.version
        self.input_size = spec.input_size
        self.views = spec.views
        self.mixed_precision = mixed_precision
        self._compile(keras_model, spec.kind + FEATURE_BLOCK_SUFFIX)
        self._check_against(keras_model)
        logger.info(
            "model %s ready on %s in %.1f s",
            self.version,
            self.device,
            time.monotonic() - started_s,
        )

    def _compile(self, keras_model: Any, block: str) -> None:
        import tensorflow as tf

        features_part, head_part = split_at_features(keras_model, block)
        features_of, head = _apply(features_part), _apply(head_part)
        side = self.input_size
        feature_shape = features_part[-1].output.shape[1:]

        views = self.views

        def forward(images: Any) -> tuple[Any, Any]:
            # Every view of the batch in one pass; the scores are averaged
            # over the views, the heatmaps come from the first (identity).
            pixels = tf.cast(images, tf.float32)
            count = tf.shape(pixels)[0]
            stacked = tf.concat([_tf_view(pixels, view) for view in views], axis=0)
            features = tf.cast(features_of(stacked), tf.float32)
            scores = tf.nn.softmax(tf.cast(head(features), tf.float32), axis=-1)
            scores = tf.reduce_mean(tf.reshape(scores, [len(views), count, -1]), axis=0)
            return features[:count], scores

        self._forward = tf.function(
            forward,
            input_signature=[tf.TensorSpec([None, side, side, 3], tf.uint8)],
        )
        self._grad_cam = tf.function(
            lambda features, classes: grad_cam(head, features, classes),
            input_signature=[
                tf.TensorSpec([None, *feature_shape], tf.float32),
                tf.TensorSpec([None], tf.int32),
            ],
        )

    def _check_against(self, keras_model: Any) -> None:
        """Warm both graphs up and make sure the cut changed nothing."""
        side = self.input_size
        probe = np.random.default_rng(0).integers(0, 256, (2, side, side, 3))
        probe = probe.astype(np.uint8)
        stacked = np.concatenate([view_of(probe, view) for view in self.views])
        expected = np.asarray(keras_model(stacked.astype(np.float32), training=False))
        expected = expected.reshape(len(self.views), len(probe), -1).mean(axis=0)
        got = self.run(probe, heatmaps_for_all=True)
        worst = max(
            abs(row.scores[label] - float(value))
            for row, values in zip(got, expected, strict=True)
            for label, value in zip(LABELS, values, strict=True)
        )
        if worst > SPLIT_TOLERANCE:
            raise ModelError(
                f"model {self.version} gives different scores once cut for "
                f"heatmaps (by {worst:.4f}); its layers are not a simple chain"
            )

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """Scores over LABELS for a (n, size, size, 3) uint8 batch, no heatmaps."""
        _, scores = self._forward(pixels)
        return np.asarray(scores)

    def run(
        self, pixels: np.ndarray, *, heatmaps_for_all: bool = False
    ) -> list[Inference]:
        """Verdicts for a (n, size, size, 3) uint8 batch, maps for sick ones."""
        features, scores = self._forward(pixels)
        scores = np.asarray(scores)
        predicted = scores.argmax(axis=1).astype(np.int32)
        wanted = np.flatnonzero(
            np.ones_like(predicted, bool)
            if heatmaps_for_all
            else predicted != HEALTHY_INDEX
        )
        cams: dict[int, np.ndarray] = {}
        if wanted.size:
            maps = self._grad_cam(
                np.asarray(features)[wanted], predicted[wanted]
            ).numpy()
            cams = dict(zip(wanted.tolist(), maps, strict=True))
        return [
            Inference(
                label=LABELS[int(predicted[i])],
                scores={
                    label: round(float(value), 4)
                    for label, value in zip(LABELS, scores[i], strict=True)
                },
                cam=cams.get(i),
            )
            for i in range(len(scores))
        ]


def cpu_threads_per_process(processes: int) -> int:
    """Share the machine's cores between worker processes on a CPU."""
    return max(1, (os.cpu_count() or 1) // processes)
