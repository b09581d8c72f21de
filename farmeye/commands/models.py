"""``farmeye train``, ``evaluate`` and ``diagnose``: making and checking models."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from farmeye.imaging import ImageError


@click.command()
@click.argument(
    "dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for models, card, metrics, plots and checkpoints.",
)
@click.option(
    "--epochs",
    default=16,
    show_default=True,
    help="Fine-tuning epochs of the full model (after the head-only epochs).",
)
@click.option(
    "--triage-epochs",
    default=24,
    show_default=True,
    help="Fine-tuning epochs of the triage model (after the head-only epochs).",
)
@click.option(
    "--head-epochs",
    default=4,
    show_default=True,
    help="Epochs that train the classifier head alone first.",
)
@click.option(
    "--ema-momentum",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.995,
    show_default=True,
    help="Fine-tuning ends with this moving average of the weights; 0 turns it off.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    help="Seed for the split, augmentation and initialisation.",
)
@click.option(
    "--backbone-weights",
    default="imagenet",
    show_default=True,
    help="MobileNetV2 weights file, 'imagenet' (Keras download) or 'random'.",
)
@click.option(
    "--views",
    default=10,
    show_default=True,
    help="Views cached per training photo (1 plain, the rest augmented).",
)
@click.option(
    "--full-size",
    default=224,
    show_default=True,
    help="Input side of the full model in pixels.",
)
@click.option(
    "--triage-size",
    default=128,
    show_default=True,
    help="Input side of the triage model in pixels.",
)
@click.option(
    "--stem-layer",
    type=click.Choice(["block_5_add", "block_9_add", "block_12_add"]),
    default="block_5_add",
    show_default=True,
    help="Last frozen MobileNetV2 layer; everything above it is fine-tuned.",
)
@click.option(
    "--batch-size", default=64, show_default=True, help="Training batch size."
)
@click.option(
    "--per-label-limit",
    type=int,
    default=None,
    help="Use at most this many photos per label (quick runs).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Feature cache folder (default OUT/cache); reused across runs.",
)
@click.option(
    "--ship",
    is_flag=True,
    help="Copy the result into the installed package as the shipped models.",
)
def train(dataset_dir: Path, out_dir: Path, ship: bool, **options: Any) -> None:
    """Train, calibrate and export the full and triage models from DATASET_DIR.

    DATASET_DIR holds one folder per label and optionally manifest.csv.
    Interrupting is safe: a second run with the same --out resumes.
    """
    from training.card import ship as ship_models
    from training.train import TrainConfig, run

    options["ema_momentum"] = options["ema_momentum"] or None
    config = TrainConfig(dataset_dir=dataset_dir, out_dir=out_dir, **options)
    metrics = run(config, progress=_progress_printer())
    for kind, result in metrics["validation"].items():
        click.echo(
            f"{kind}: accuracy {result['accuracy']}, macro F1 {result['macro_f1']}, "
            f"sick recall {result['sick_recall']} on {result['n']} validation photos"
        )
    if ship:
        from farmeye.models import SHIPPED_DIR

        ship_models(out_dir, SHIPPED_DIR)
        click.echo(f"shipped into {SHIPPED_DIR}")


def _progress_printer() -> Any:
    """Progress on one rewritten line on a terminal, every 10 % otherwise."""
    tty = sys.stderr.isatty()
    shown: dict[str, int] = {}

    def show(stage: str, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if tty:
            end = "\n" if done == total else ""
            click.echo(f"\r{stage}: {done}/{total} ({percent}%)", err=True, nl=False)
            click.echo(end, err=True, nl=False)
        elif percent // 10 != shown.get(stage, -1) or done == total:
            shown[stage] = percent // 10
            click.echo(f"{stage}: {done}/{total} ({percent}%)", err=True)

    return show


@click.command()
@click.argument(
    "dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--model",
    default="full",
    show_default=True,
    help="full, triage, or the path of a model file beside its card.json.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(dataset_dir: Path, model: str, as_json: bool) -> None:
    """Evaluate a model on DATASET_DIR (one folder per label)."""
    from farmeye.models import ModelError, resolve
    from training.card import evaluate_folder_model, labels_of
    from training.dataset import load_samples

    try:
        spec = resolve(model)
        samples = load_samples(dataset_dir)
        result = evaluate_folder_model(
            spec.path.parent, spec.kind, samples, labels_of(samples)
        )
    except (ModelError, ImageError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    result = {"model": spec.version} | result
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{spec.version} on {result['n']} photos: accuracy {result['accuracy']}, "
        f"macro F1 {result['macro_f1']}, sick recall {result['sick_recall']}"
    )
    for label, row in result["per_class"].items():
        click.echo(
            f"  {label:12} precision {row['precision']:.3f} "
            f"recall {row['recall']:.3f} f1 {row['f1']:.3f} n={row['support']}"
        )


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object per image."
)
@click.option("--no-full", is_flag=True, help="Triage only (no TensorFlow needed).")
def diagnose(images: tuple[Path, ...], as_json: bool, no_full: bool) -> None:
    """Triage and full verdicts for IMAGES, offline, with the shipped models."""
    from farmeye.analysis import FullModel
    from farmeye.models import ModelError
    from farmeye.triage import TriageModel

    try:
        triage = TriageModel.shipped()
        full = None if no_full else FullModel.shipped()
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None

    failed = 0
    for path in images:
        entry: dict[str, Any] = {"file": str(path)}
        try:
            data = path.read_bytes()
            label, scores = triage.classify(data)
            entry["triage"] = {
                "label": label,
                "scores": scores,
                "model": triage.version,
            }
            if full is not None:
                ((label, scores),) = full.classify_many([data])
                entry["full"] = {
                    "label": label,
                    "scores": scores,
                    "model": full.version,
                }
        except (OSError, ImageError) as exc:
            failed += 1
            entry["error"] = str(exc)
        _print_diagnosis(entry, as_json)
    if failed:
        sys.exit(1)


def _print_diagnosis(entry: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(entry))
    elif "error" in entry:
        click.echo(f"{entry['file']}: error: {entry['error']}", err=True)
    else:
        parts = [
            f"{kind} {entry[kind]['label']} ({max(entry[kind]['scores'].values()):.2f})"
            for kind in ("triage", "full")
            if kind in entry
        ]
        click.echo(f"{entry['file']}: " + ", ".join(parts))
