"""Where the backbone is cut into a frozen stem and a trained top."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from farmeye.cli import main
from training.dataset import Sample
from training.features import CacheSpec
from training.model import (
    FULL_TOP_LAYER,
    STEM_LAYERS,
    backbone,
    full_architecture,
    triage_architecture,
)

SIZE = 64


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One random backbone, saved so that every architecture loads the same."""
    base = backbone(SIZE, "random")
    path = tmp_path_factory.mktemp("weights") / "backbone.weights.h5"
    base.save_weights(path)
    return path, base


@pytest.mark.parametrize("stem_layer", STEM_LAYERS)
def test_stem_and_top_compute_the_whole_backbone(weights, stem_layer):
    # A cut that dropped a residual connection would change the output.
    path, base = weights
    arch = full_architecture(SIZE, str(path), stem_layer=stem_layer)
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3))
    pixels = pixels.astype(np.float32)
    whole = np.asarray(base(pixels, training=False))
    cut = np.asarray(arch.top(arch.stem(pixels), training=False))
    assert base.layers[-1].name == FULL_TOP_LAYER
    np.testing.assert_allclose(cut, whole, atol=1e-4)
    assert arch.stem.trainable is False


def test_earlier_stems_leave_more_of_the_network_to_train(weights):
    path, _ = weights
    counts = []
    for stem_layer in STEM_LAYERS:
        arch = triage_architecture(SIZE, str(path), stem_layer=stem_layer)
        arch.set_top_trainable(True)
        counts.append(sum(int(np.prod(w.shape)) for w in arch.top.trainable_weights))
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1]


def test_unknown_stem_layer_is_refused(weights):
    path, _ = weights
    with pytest.raises(ValueError, match="block_3_add"):
        full_architecture(SIZE, str(path), stem_layer="block_3_add")


def test_train_command_offers_exactly_the_supported_stem_layers():
    train = main.get_command(click.Context(main), "train")
    assert train is not None
    option = next(p for p in train.params if p.name == "stem_layer")
    assert tuple(option.type.choices) == STEM_LAYERS
    result = CliRunner().invoke(
        main, ["train", ".", "--out", "x", "--stem-layer", "conv1"]
    )
    assert result.exit_code == 2
    assert "block_5_add" in result.output


def test_feature_cache_key_depends_on_the_stem_layer():
    samples = (Sample(Path("a.jpg"), "healthy", "g1"),)
    keys = {
        CacheSpec(samples, 2, (64,), 0, "random", layer).key() for layer in STEM_LAYERS
    }
    assert len(keys) == len(STEM_LAYERS)
