"""The models installed with FarmEye, measured on photos they never trained on.

The sample is drawn from the validation split that the shipped run held out
(recomputed from the seed and shares in its card), so these are real
measurements of the shipped files, made through the production classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from farmeye.labels import LABELS
from farmeye.models import SHIPPED_DIR, load_card
from training.card import evaluate_folder_model, labels_of
from training.dataset import Sample
from training.train import TrainConfig, split

PER_LABEL = 60
"""Validation photos per label in the sample (Newcastle has about 70)."""


@pytest.fixture(scope="module")
def held_out(dataset_dir: Path) -> list[Sample]:
    params: dict[str, Any] = load_card().raw["training"]
    config = TrainConfig(
        dataset_dir=dataset_dir,
        out_dir=Path("unused"),
        seed=params["seed"],
        val_share=params["val_share"],
        calibration_share=params["calibration_share"],
        per_label_limit=params["per_label_limit"],
    )
    validation = split(config).validation
    return [
        sample
        for label in LABELS
        for sample in [s for s in validation if s.label == label][:PER_LABEL]
    ]


def test_shipped_card_describes_both_models():
    """The installed card names the labels and both model files, which exist."""
    card = load_card()
    assert card.labels == LABELS
    for kind in ("full", "triage"):
        assert card.model(kind).path.is_file()


def test_triage_file_is_small_enough_for_a_pi():
    """The int8 triage model is at most 3 MB."""
    assert load_card().model("triage").path.stat().st_size <= 3_000_000


def test_full_model_on_held_out_photos(held_out: list[Sample]):
    """The full model is accurate on every label of held-out photos."""
    result = evaluate_folder_model(SHIPPED_DIR, "full", held_out, labels_of(held_out))
    assert result["accuracy"] >= 0.96
    assert result["macro_f1"] >= 0.96
    for label in LABELS:
        assert result["per_class"][label]["recall"] >= 0.9, label


def test_triage_model_on_held_out_photos(held_out: list[Sample]):
    """Triage rarely calls a sick bird healthy and is mostly right."""
    result = evaluate_folder_model(SHIPPED_DIR, "triage", held_out, labels_of(held_out))
    assert result["sick_recall"] >= 0.98
    assert result["accuracy"] >= 0.93
