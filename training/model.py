"""Model architectures: the full model and the triage model.

Both start from an ImageNet MobileNetV2. Its layers up to a stem layer (one
of :data:`STEM_LAYERS`, :data:`STEM_LAYER` by default) stay frozen (the
"stem"); everything after is trained. Because the stem is frozen,
training can run it once per photo view, cache its output and train only the
top, which is what makes training feasible on a two-core machine.

Both models take uint8-valued RGB (what :func:`farmeye.imaging.preprocess`
returns) and scale it themselves.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from farmeye.labels import LABELS  # noqa: E402

STEM_LAYERS = ("block_5_add", "block_9_add", "block_12_add")
"""Where the stem may end: the last block of a stage, so that no layer above
the cut needs a tensor from below it. Earlier cuts train more of the network
and cache larger features (per 224 px view in float16: 50, 25 and 37 KB)."""

STEM_LAYER = "block_5_add"
"""Default last frozen layer; its output is what the feature cache holds."""

FULL_TOP_LAYER = "out_relu"
"""The full model keeps the whole backbone."""

TRIAGE_TOP_LAYER = "block_15_add"
"""The triage model stops three blocks early to stay small and fast."""

IMAGENET = "imagenet"
RANDOM = "random"


def backbone(size: int, weights: str) -> keras.Model:
    """MobileNetV2 1.0 without its classifier, for ``size`` x ``size`` inputs.

    ``weights`` is a path to a Keras weights file, ``"imagenet"`` for Keras'
    own download, or ``"random"`` (for tests only).
    """
    model = keras.applications.MobileNetV2(
        input_shape=(size, size, 3),
        alpha=1.0,
        include_top=False,
        weights=IMAGENET if weights == IMAGENET else None,
    )
    if weights not in (IMAGENET, RANDOM):
        model.load_weights(weights)
    return model


def stem(base: keras.Model, stem_layer: str) -> keras.Model:
    """The frozen lower part of ``base``, ending at ``stem_layer``."""
    model = keras.Model(base.input, base.get_layer(stem_layer).output, name="stem")
    model.trainable = False
    return model


def top(base: keras.Model, stem_layer: str, top_layer: str, name: str) -> keras.Model:
    """The trainable part of ``base`` from ``stem_layer`` to ``top_layer``.

    Batch normalisation stays frozen: with small batches on a CPU its running
    statistics would only get worse.
    """
    model = keras.Model(
        base.get_layer(stem_layer).output, base.get_layer(top_layer).output, name=name
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return model


def head(features: keras.KerasTensor, dropout: float, prefix: str) -> keras.KerasTensor:
    """Pool, drop out and classify into logits over :data:`LABELS`."""
    x = keras.layers.GlobalAveragePooling2D(name=f"{prefix}_pool")(features)
    x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    return keras.layers.Dense(len(LABELS), name=f"{prefix}_logits")(x)


class Architecture:
    """The layers of one model kind, shared by its training and export graphs."""

    def __init__(
        self,
        kind: str,
        size: int,
        weights: str,
        top_layer: str,
        dropout: float,
        stem_layer: str = STEM_LAYER,
    ) -> None:
        if stem_layer not in STEM_LAYERS:
            raise ValueError(
                f"stem layer {stem_layer!r} is not one of {', '.join(STEM_LAYERS)}"
            )
        base = backbone(size, weights)
        self.kind = kind
        self.size = size
        self.stem_layer = stem_layer
        self.stem = stem(base, stem_layer)
        self.top = top(base, stem_layer, top_layer, name=f"{kind}_top")
        self.stem_shape = tuple(self.stem.output.shape[1:])

        features = keras.Input(self.stem_shape, name="stem_features")
        logits = head(self.top(features), dropout, prefix=kind)
        self.trainer = keras.Model(features, logits, name=f"{kind}_trainer")
        """Maps cached stem features to logits: what training fits."""

    def set_top_trainable(self, trainable: bool) -> None:
        """Freeze or thaw the backbone part of the top (the head always trains)."""
        for layer in self.top.layers:
            if not isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = trainable

    def logits_layer(self) -> keras.layers.Dense:
        return self.trainer.get_layer(f"{self.kind}_logits")

    def inference_model(self) -> keras.Model:
        """Image in, calibrated scores out: the model that is shipped."""
        image = keras.Input((self.size, self.size, 3), name="image")
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(image)
        # Call the trainer's layers rather than the trainer itself: a nested
        # compiled model would drag its optimizer state into the saved file.
        x = self.top(self.stem(x))
        for name in ("pool", "dropout", "logits"):
            x = self.trainer.get_layer(f"{self.kind}_{name}")(x)
        scores = keras.layers.Softmax(name="scores")(x)
        return keras.Model(image, scores, name=f"farmeye_{self.kind}")


def full_architecture(
    size: int, weights: str, dropout: float = 0.3, stem_layer: str = STEM_LAYER
) -> Architecture:
    return Architecture("full", size, weights, FULL_TOP_LAYER, dropout, stem_layer)


def triage_architecture(
    size: int, weights: str, dropout: float = 0.2, stem_layer: str = STEM_LAYER
) -> Architecture:
    return Architecture("triage", size, weights, TRIAGE_TOP_LAYER, dropout, stem_layer)
