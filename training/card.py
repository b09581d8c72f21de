"""Export of trained models, their end-to-end evaluation and the model card."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from farmeye.analysis import FullModel
from farmeye.imaging import preprocess
from farmeye.labels import LABELS, label_index
from farmeye.models import load_card
from farmeye.triage import TriageModel
from training import litert
from training.metrics import healthy_threshold_for, report, triage_labels
from training.model import Architecture

if TYPE_CHECKING:
    from training.train import Splits, TrainConfig

logger = logging.getLogger(__name__)

SHIPPED_FILES = ("card.json", "card.md", "full.keras", "triage.tflite")
REPRESENTATIVE_PHOTOS = 300

SOURCES = [
    "Machuve, Nwankwo, Mduma, Mbelwa, 'Machine Learning Dataset for Poultry "
    "Diseases Diagnostics', Zenodo, doi:10.5281/zenodo.4628934 (CC BY 4.0)",
    "Public Kaggle collections of the same four classes, as gathered by the "
    "poultry-excreta-dataset-curation collection (resized to 250 x 250)",
    "ImageNet MobileNetV2 1.0 weights from the TensorFlow-Slim checkpoint "
    "(Apache 2.0, tensorflow/models)",
]
PREPROCESSING = (
    "farmeye.imaging.preprocess: decode (JPEG draft mode), EXIF orientation, "
    "alpha flattened on white, white letterbox bands trimmed, centred square "
    "crop, bilinear resize; uint8 RGB, scaled to [-1, 1] inside the model"
)

Progress = Callable[[str, int, int], None]


def pixels(samples: Sequence[Any], size: int) -> np.ndarray:
    return np.stack([preprocess(s.path.read_bytes(), size) for s in samples])


def labels_of(samples: Sequence[Any]) -> np.ndarray:
    return np.array([label_index(s.label) for s in samples], dtype=np.int64)


def export(
    out: Path,
    full: Architecture,
    triage: Architecture,
    splits: Splits,
    config: TrainConfig,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write ``full.keras`` and int8 ``triage.tflite`` and check the int8 copy."""
    full.inference_model().save(out / "full.keras")

    triage_float = triage.inference_model()
    rng = np.random.default_rng(config.seed)
    chosen = rng.permutation(len(splits.train))[:REPRESENTATIVE_PHOTOS]
    representative = pixels([splits.train[i] for i in chosen], triage.size)
    (out / "triage.tflite").write_bytes(litert.int8_model(triage_float, representative))

    # The int8 copy must say what its float source says.
    val_pixels = pixels(splits.validation, triage.size)
    float_scores = np.asarray(
        triage_float.predict(val_pixels.astype(np.float32), verbose=0)
    )
    interpreter = _bare_triage(out / "triage.tflite")
    int8_scores = np.stack([interpreter(p) for p in val_pixels])
    agreement = {
        "label_agreement": round(
            float(np.mean(float_scores.argmax(1) == int8_scores.argmax(1))), 4
        ),
        "mean_abs_score_difference": round(
            float(np.abs(float_scores - int8_scores).mean()), 4
        ),
    }
    logger.info("triage int8 vs float on validation: %s", agreement)

    # The operating threshold is set on calibration photos, never validation.
    calib_scores = np.stack(
        [interpreter(p) for p in pixels(splits.calibration, triage.size)]
    )
    threshold = healthy_threshold_for(
        labels_of(splits.calibration), calib_scores, config.target_sick_recall
    )
    return {
        "full": {
            "file": "full.keras",
            "input_size": full.size,
            "views": list(config.full_views),
        },
        "triage": {
            "file": "triage.tflite",
            "input_size": triage.size,
            "healthy_threshold": round(threshold, 4),
            "int8_vs_float": agreement,
        },
    }


def _bare_triage(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    sink = interpreter.get_output_details()[0]
    scale, zero = sink["quantization"]

    def run(image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source, image[None])
        interpreter.invoke()
        raw = interpreter.get_tensor(sink["index"])[0].astype(np.float32)
        return np.asarray((raw - zero) * scale, dtype=np.float32)

    return run


def evaluate_exports(out: Path, splits: Splits) -> dict[str, Any]:
    """Metrics of the exported files on validation, through production code."""
    y = labels_of(splits.validation)
    return {
        "validation": {
            "full": evaluate_folder_model(out, "full", splits.validation, y),
            "triage": evaluate_folder_model(out, "triage", splits.validation, y),
        }
    }


def evaluate_folder_model(
    folder: Path, kind: str, samples: Sequence[Any], y: np.ndarray
) -> dict[str, Any]:
    """Run the model file of ``folder`` over ``samples`` as production would."""
    spec = load_card(folder).model(kind)
    if kind == "full":
        model = FullModel(spec)
        scores = np.concatenate(
            [
                model.scores(pixels(samples[i : i + 64], spec.input_size))
                for i in range(0, len(samples), 64)
            ]
        )
        return report(y, scores)
    triage = TriageModel(spec, threads=2)
    scores = np.stack([triage.scores(p) for p in pixels(samples, spec.input_size)])
    return report(y, scores, triage_labels(scores, triage.healthy_threshold))


def write_card(
    out: Path, params: dict[str, Any], metrics: dict[str, Any], files: dict[str, Any]
) -> dict[str, Any]:
    """Write ``card.json`` and ``card.md`` beside the models."""
    digests = {}
    for kind, entry in files.items():
        data = (out / entry["file"]).read_bytes()
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entry["bytes"] = len(data)
        digests[kind] = entry["sha256"]
        entry["metrics"] = metrics.get("validation", {}).get(kind, {})
    files["full"]["format"] = "keras"
    files["triage"]["format"] = "tflite, full integer int8, uint8 input and output"
    version = model_version(files, digests)
    card = {
        "name": "farmeye-droppings",
        "version": version,
        "labels": list(LABELS),
        "preprocessing": PREPROCESSING,
        "models": files,
        "calibration": {
            "method": "temperature scaling on the calibration split, "
            "baked into the logits layer",
            "temperature": metrics.get("temperature"),
        },
        "dataset": {
            "hash": params["dataset_hash"],
            "photos": params["photos"],
            "split": "by near_duplicate_group: train / calibration / validation",
            "sources": SOURCES,
        },
        "training": params,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2))
    (out / "card.md").write_text(render_markdown(card))
    return card


def model_version(files: dict[str, Any], digests: dict[str, str]) -> str:
    """Date and a digest of what decides the verdicts: files and views."""
    views = ",".join(files["full"].get("views", ["identity"]))
    digest = hashlib.sha256(
        (digests["full"] + digests["triage"] + views).encode()
    ).hexdigest()[:8]
    return f"{datetime.date.today().isoformat()}-{digest}"


def render_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# FarmEye model card: {card['name']} {card['version']}",
        "",
        "Labels, in output order: " + ", ".join(card["labels"]) + ".",
        "",
        f"Preprocessing: {card['preprocessing']}.",
        "",
    ]
    for kind, entry in card["models"].items():
        metrics = entry.get("metrics", {})
        lines += [
            f"## {kind}",
            "",
            f"- file: `{entry['file']}` "
            f"({entry['bytes'] / 1e6:.2f} MB, {entry['format']})",
            f"- input: {entry['input_size']} x {entry['input_size']} RGB",
        ]
        if entry.get("views", ["identity"]) != ["identity"]:
            lines.append(
                "- verdict: scores averaged over the views "
                + ", ".join(entry["views"])
                + " (test-time augmentation)"
            )
        if "healthy_threshold" in entry:
            threshold = entry["healthy_threshold"]
            lines.append(f"- verdict rule: healthy only when its score >= {threshold}")
        if metrics:
            lines += [
                f"- validation: n = {metrics['n']}, accuracy {metrics['accuracy']}, "
                f"macro F1 {metrics['macro_f1']}, "
                f"sick recall {metrics['sick_recall']}, "
                f"ECE {metrics['expected_calibration_error']}",
                "",
                "| label | precision | recall | F1 | support |",
                "| --- | --- | --- | --- | --- |",
            ]
            for label, row in metrics["per_class"].items():
                cells = [label] + [
                    str(row[key]) for key in ("precision", "recall", "f1", "support")
                ]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    data = card["dataset"]
    lines += [
        "## Data",
        "",
        f"- dataset hash (sha256 over label and photo bytes): `{data['hash']}`",
        f"- photos: {data['photos']}; {data['split']}",
        "- sources:",
        *[f"  - {source}" for source in data["sources"]],
        "",
        "## Training parameters",
        "",
        "```json",
        json.dumps(card["training"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def ship(run_dir: Path, package_dir: Path) -> None:
    """Copy a run's models and card into the package's model folder."""
    for name in SHIPPED_FILES:
        shutil.copy2(run_dir / name, package_dir / name)
