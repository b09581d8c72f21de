"""A tiny end-to-end training run: cache, fit, calibrate, export, evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from farmeye.cli import main
from farmeye.imaging import preprocess
from farmeye.labels import LABELS
from training.card import model_version
from training.dataset import load_samples
from training.features import _views_of

TINY = [
    "--epochs", "1", "--head-epochs", "1", "--triage-epochs", "1", "--views", "2",
    "--full-size", "96", "--triage-size", "64", "--per-label-limit", "12",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(
    dataset_dir: Path, backbone_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("tiny-run")
    args = ["train", str(dataset_dir), "--out", str(out)]
    args += [*TINY, "--backbone-weights", str(backbone_weights)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_tiny_run_writes_models_card_metrics_and_plots(tiny_run: Path):
    """Every artefact a run promises lies beside the models."""
    for name in ("full.keras", "triage.tflite", "card.json", "card.md"):
        assert (tiny_run / name).is_file(), name
    for name in ("params.json", "metrics.json", "history.json"):
        assert json.loads((tiny_run / name).read_text())
    assert (tiny_run / "plots" / "full_confusion.png").stat().st_size > 1000
    assert (tiny_run / "plots" / "triage_curves.png").stat().st_size > 1000


def test_card_records_data_parameters_and_metrics(tiny_run: Path):
    """The card names labels, dataset hash, seed, sources and per-class metrics."""
    card = json.loads((tiny_run / "card.json").read_text())
    assert card["labels"] == list(LABELS)
    assert len(card["dataset"]["hash"]) == 64
    assert card["training"]["seed"] == 0
    assert any("zenodo" in source.lower() for source in card["dataset"]["sources"])
    triage = card["models"]["triage"]
    assert set(triage["metrics"]["per_class"]) == set(LABELS)
    assert 0.5 <= triage["healthy_threshold"] <= 1.0
    assert card["models"]["full"]["views"] == ["identity", "flip_h", "flip_v"]
    expected = model_version(card["models"], digests(card))
    assert card["version"].rsplit("-", 1)[1] == expected.rsplit("-", 1)[1]


def digests(card: dict) -> dict[str, str]:
    return {kind: entry["sha256"] for kind, entry in card["models"].items()}


def test_triage_file_is_full_integer_and_agrees_with_float(tiny_run: Path):
    """The int8 TFLite model takes uint8 and tracks its float source closely."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tiny_run / "triage.tflite"))
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    card = json.loads((tiny_run / "card.json").read_text())
    agreement = card["models"]["triage"]["int8_vs_float"]
    assert agreement["mean_abs_score_difference"] < 0.1


def test_calibration_temperature_is_recorded(tiny_run: Path):
    """Both models carry the temperature fitted on the calibration split."""
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["temperature"]) == {"full", "triage"}
    assert all(t > 0 for t in metrics["temperature"].values())


def test_second_run_resumes_instead_of_retraining(
    tiny_run: Path, dataset_dir: Path, backbone_weights: Path
):
    """Rerunning with the same --out reuses the cache and the finished epochs."""
    before = json.loads((tiny_run / "history.json").read_text())
    args = ["train", str(dataset_dir), "--out", str(tiny_run)]
    args += [*TINY, "--backbone-weights", str(backbone_weights)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((tiny_run / "history.json").read_text()) == before


def test_evaluate_json_contract(tiny_run: Path, dataset_dir: Path, tmp_path: Path):
    """`evaluate --json` prints the fields other tools read, rows = true labels."""
    for label in LABELS:
        (tmp_path / label).mkdir()
        for path in sorted((dataset_dir / label).iterdir())[:3]:
            shutil.copy(path, tmp_path / label / path.name)
    (tmp_path / "notes.txt").write_text("ignored")
    model = tiny_run / "triage.tflite"
    result = CliRunner().invoke(
        main, ["evaluate", str(tmp_path), "--model", str(model), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for key in ("model", "n", "accuracy", "macro_f1", "labels", "per_class"):
        assert key in report
    assert report["n"] == 12
    assert [sum(row) for row in report["confusion_matrix"]] == [3, 3, 3, 3]
    assert "sick_recall" in report


def test_cached_plain_view_is_the_production_preprocessing(dataset_dir: Path):
    """View 0 of the training cache is exactly what production feeds the model."""
    sample = load_samples(dataset_dir)[0]
    views = _views_of((str(sample.path), 2, 0, (96, 64)))
    data = sample.path.read_bytes()
    assert np.array_equal(views[0][0], preprocess(data, 96))
    assert np.array_equal(views[0][1], preprocess(data, 64))
    assert views[1][0].shape == (96, 96, 3)
