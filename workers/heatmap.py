"""Grad-CAM heatmaps: which part of the photo made the model say what it said.

For a photo the model does not call healthy, :func:`grad_cam` takes the
gradient of the predicted class's score (the logit, before softmax) with
respect to the last convolutional feature map, averages it over the map to
weigh each channel, and keeps the positive part of the weighted sum: a coarse
map (7 x 7 for a 224-pixel input) of the evidence for that class. The worker
stores the map itself (:func:`farmeye.heatmaps.encode_map`); the hub paints
it over the photo when someone asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
