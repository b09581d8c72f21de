"""The model runner and Grad-CAM on the shipped full model; the GPU is faked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from farmeye.analysis import FullModel
from farmeye.imaging import preprocess
from farmeye.labels import HEALTHY, LABELS
from farmeye.models import VIEWS, ModelError, load_card
from tests.workers.support import synthetic_photo
from workers.runner import (
    DeviceError,
    ModelRunner,
    configure_device,
    split_at_features,
    with_mixed_precision,
)


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    return ModelRunner(load_card().model("full"), device="cpu")


@pytest.fixture(scope="module")
def pixels(runner: ModelRunner) -> np.ndarray:
    photos = [synthetic_photo(seed) for seed in range(6)]
    return np.stack([preprocess(photo, runner.input_size) for photo in photos])


def test_scores_match_the_keras_model(runner: ModelRunner, pixels: np.ndarray):
    """The cut, compiled model gives the scores of the model as loaded."""
    expected = FullModel.shipped().scores(pixels)
    got = runner.run(pixels)
    for row, inference in zip(expected, got, strict=True):
        assert inference.label == LABELS[int(row.argmax())]
        for label, value in zip(LABELS, row, strict=True):
            assert inference.scores[label] == pytest.approx(float(value), abs=2e-3)


def test_every_view_in_the_graph_matches_the_numpy_views(pixels: np.ndarray):
    """The runner's TensorFlow views average to what FullModel's numpy views give."""
    spec = dataclasses.replace(load_card().model("full"), views=VIEWS)
    expected = FullModel(spec).scores(pixels)
    got = ModelRunner(spec, device="cpu").scores(pixels)
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_heatmap_exactly_for_verdicts_that_are_not_healthy(
    runner: ModelRunner, pixels: np.ndarray
):
    """Each sick verdict carries a [0, 1] map of the feature grid; healthy none."""
    for inference in runner.run(pixels):
        if inference.label == HEALTHY:
            assert inference.cam is None
        else:
            assert inference.cam is not None
            assert inference.cam.ndim == 2
            assert 0.0 <= inference.cam.min() <= inference.cam.max() <= 1.0


def test_heatmap_follows_the_predicted_class_evidence(
    runner: ModelRunner, pixels: np.ndarray
):
    """Maps asked for every photo are normalised to peak at 1 where evidence is."""
    for inference in runner.run(pixels, heatmaps_for_all=True):
        assert inference.cam is not None
        assert inference.cam.max() in (pytest.approx(1.0), 0.0)


def test_mixed_precision_copy_computes_in_float16():
    """The float16 copy keeps a float32 softmax and scores like the original."""
    original = FullModel.shipped().keras_model
    mixed = with_mixed_precision(original)
    assert mixed.layers[-1].dtype_policy.name == "float32"
    assert any(layer.dtype_policy.name == "mixed_float16" for layer in mixed.layers)
    probe = np.random.default_rng(0).uniform(0, 255, (2, *original.input_shape[1:]))
    expected = np.asarray(original(probe.astype(np.float32), training=False))
    got = np.asarray(mixed(probe.astype(np.float32), training=False))
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 0.02


def test_model_without_feature_block_is_refused():
    """A model with no <kind>_top block cannot give heatmaps: a clear error."""
    import keras

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(4)(keras.layers.Flatten()(inputs))
    with pytest.raises(ModelError, match="no 'full_top' block"):
        split_at_features(keras.Model(inputs, outputs), "full_top")


@dataclass
class FakeGpu:
    name: str
    device_type: str = "GPU"


@dataclass
class FakeTensorFlowConfig:
    """Stands in for tf.config on a machine with ``gpus``."""

    gpus: list[FakeGpu]
    visible: list[Any] | None = None
    memory_growth: dict[str, bool] = field(default_factory=dict)
    intra_op_threads: int | None = None

    def __post_init__(self) -> None:
        self.experimental = self
        self.threading = self

    def list_physical_devices(self, kind: str) -> list[FakeGpu]:
        return list(self.gpus) if kind == "GPU" else []

    def set_visible_devices(self, devices: list[Any], kind: str) -> None:
        self.visible = list(devices)

    def set_memory_growth(self, device: FakeGpu, enabled: bool) -> None:
        self.memory_growth[device.name] = enabled

    def set_intra_op_parallelism_threads(self, threads: int) -> None:
        self.intra_op_threads = threads


def test_gpu_process_takes_its_gpu_with_memory_growth():
    """Process i of a machine sees GPU i (modulo the count), memory growth on."""
    config = FakeTensorFlowConfig([FakeGpu("GPU:0"), FakeGpu("GPU:1")])
    name = configure_device("gpu", index=3, config=config)
    assert name == "GPU:1"
    assert config.visible == [config.gpus[1]]
    assert config.memory_growth == {"GPU:1": True}


def test_cpu_device_hides_gpus_and_shares_cores():
    """--device cpu hides every GPU and sets the process's thread count."""
    config = FakeTensorFlowConfig([FakeGpu("GPU:0")])
    assert configure_device("cpu", cpu_threads=3, config=config) == "cpu"
    assert config.visible == []
    assert config.intra_op_threads == 3


def test_gpu_asked_without_a_gpu_is_a_clear_error():
    """--device gpu on a machine without one says what to install or use."""
    with pytest.raises(DeviceError, match="sees no GPU.*--device cpu"):
        configure_device("gpu", config=FakeTensorFlowConfig([]))
