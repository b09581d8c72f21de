"""Model cards and the views the full model averages over."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from farmeye.analysis import FullModel, view_of
from farmeye.imaging import preprocess
from farmeye.models import SHIPPED_DIR, VIEWS, ModelError, load_card
from tests.workers.support import synthetic_photo


def card_with_views(tmp_path: Path, views: object) -> Path:
    """A copy of the shipped card whose full model lists ``views``."""
    raw = json.loads((SHIPPED_DIR / "card.json").read_text())
    raw["models"]["full"]["views"] = views
    (tmp_path / "card.json").write_text(json.dumps(raw))
    shutil.copy(SHIPPED_DIR / "full.keras", tmp_path / "full.keras")
    return tmp_path


@pytest.mark.parametrize(
    "views", [[], ["flip_h", "identity"], ["identity", "rot90"], ["identity", 3]]
)
def test_card_with_bad_views_is_refused(tmp_path: Path, views: list[object]):
    """Views must start with identity and come from the known set."""
    card = load_card(card_with_views(tmp_path, views))
    with pytest.raises(ModelError, match="must start with identity"):
        card.model("full")


def test_card_without_views_means_the_photo_alone(tmp_path: Path):
    raw = json.loads((SHIPPED_DIR / "card.json").read_text())
    raw["models"]["full"].pop("views", None)
    (tmp_path / "card.json").write_text(json.dumps(raw))
    shutil.copy(SHIPPED_DIR / "full.keras", tmp_path / "full.keras")
    assert load_card(tmp_path).model("full").views == ("identity",)


def test_views_are_the_flips_of_the_batch():
    batch = np.arange(2 * 3 * 4 * 1).reshape(2, 3, 4, 1)
    assert np.array_equal(view_of(batch, "identity"), batch)
    assert np.array_equal(view_of(batch, "flip_h")[0, :, :, 0], batch[0, :, ::-1, 0])
    assert np.array_equal(view_of(batch, "flip_v")[1, :, :, 0], batch[1, ::-1, :, 0])
    assert np.array_equal(
        view_of(batch, "rot180")[0, :, :, 0], np.rot90(batch[0, :, :, 0], 2)
    )
    with pytest.raises(ModelError):
        view_of(batch, "rot90")


def test_full_model_averages_the_scores_of_its_views():
    """Scores with views are the mean of the single-view scores of each view."""
    spec = load_card().model("full")
    single = FullModel(dataclasses.replace(spec, views=("identity",)))
    every = FullModel(dataclasses.replace(spec, views=VIEWS))
    batch = np.stack([preprocess(synthetic_photo(seed), 224) for seed in range(3)])

    expected = np.mean([single.scores(view_of(batch, v)) for v in VIEWS], axis=0)
    got = every.scores(batch)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
