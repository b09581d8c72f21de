"""Grad-CAM heatmaps: which part of the photo made the model say what it said.

For a photo the model does not call healthy, :func:`grad_cam` takes the
gradient of the predicted class's score (the logit, before softmax) with
respect to the last convolutional feature map, averages it over the map to
weigh each channel, and keeps the positive part of the weighted sum: a coarse
map (7 x 7 for a 224-pixel input) of the evidence for that class.
:func:`render_overlay` paints it over the photo exactly as the model saw it
and encodes a PNG for ``analyses.heatmap_png``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

HEATMAP_OPACITY = 0.5
"""Weight of the colour map where the evidence is strongest (0 to 1)."""

PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNG: fast to write; the overlay is small anyway."""

_COLOUR_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array(
    [
        [0, 0, 160],  # dark blue: no evidence
        [0, 160, 255],
        [40, 220, 80],
        [255, 220, 0],
        [230, 20, 0],  # red: strongest evidence
    ],
    dtype=np.float32,
)


def grad_cam(head: Callable[[Any], Any], features: Any, classes: Any) -> Any:
    """Maps (n, h, w) in [0, 1], one per row, for class ``classes[i]`` of row i.

    ``head`` maps the feature maps (n, h, w, c) to class logits (n, k).
    Rows do not interact in inference mode, so one tape serves the batch.
    """
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(features)
        logits = tf.cast(head(features), tf.float32)
        chosen = tf.gather(logits, classes, axis=1, batch_dims=1)
    gradients = tf.cast(tape.gradient(chosen, features), tf.float32)
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2))
    evidence = tf.einsum("nhwc,nc->nhw", tf.cast(features, tf.float32), channel_weights)
    evidence = tf.nn.relu(evidence)
    peak = tf.reduce_max(evidence, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(evidence, peak)


def _colour_table() -> np.ndarray:
    levels = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(levels, _COLOUR_STOPS, _COLOURS[:, i]) for i in range(3)]
    return np.stack(channels, axis=-1).astype(np.float32)


_COLOUR_TABLE = _colour_table()
"""RGB of each of 256 evidence levels: a lookup is far cheaper than np.interp."""


def colourise(heat: np.ndarray) -> np.ndarray:
    """RGB colours (float32, 0-255) for values in [0, 1]: blue low, red high."""
    levels = np.rint(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    colours: np.ndarray = _COLOUR_TABLE[levels]
    return colours


def render_overlay(pixels: np.ndarray, cam: np.ndarray) -> bytes:
    """PNG of ``pixels`` (h, w, 3 uint8) with ``cam`` (any size) painted over.

    The map is scaled up smoothly to the photo; where it is zero the photo
    shows through unchanged, so healthy-looking areas stay readable.
    """
    height, width = pixels.shape[:2]
    small = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F")
    heat = np.asarray(
        small.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32
    )
    heat = np.clip(heat, 0.0, 1.0)
    alpha = (HEATMAP_OPACITY * heat)[..., None]
    blended = pixels.astype(np.float32) * (1.0 - alpha) + colourise(heat) * alpha
    out = io.BytesIO()
    Image.fromarray(blended.round().astype(np.uint8), mode="RGB").save(
        out, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return out.getvalue()
