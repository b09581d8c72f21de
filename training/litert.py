"""Convert Keras models to TFLite and run them on LiteRT."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter


def float_runner(
    model: keras.Model, threads: int = 2
) -> Callable[[np.ndarray], np.ndarray]:
    """Return a function running ``model`` in float on LiteRT, one image at a time."""
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    sink = interpreter.get_output_details()[0]["index"]

    def run(batch: np.ndarray) -> np.ndarray:
        outputs = []
        for image in batch:
            interpreter.set_tensor(source, image[None].astype(np.float32))
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(sink)[0].copy())
        return np.stack(outputs)

    return run


def int8_model(model: keras.Model, representative: Iterable[np.ndarray]) -> bytes:
    """Quantise ``model`` fully to int8 with uint8 input and output.

    ``representative`` yields single uint8 images the way production sees them;
    the converter calibrates every activation range on them.
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [image[None].astype(np.float32)] for image in representative
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return bytes(converter.convert())
