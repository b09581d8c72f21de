"""PNG plots written beside every trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def write_all(
    folder: Path, history: dict[str, list[dict[str, Any]]], metrics: dict[str, Any]
) -> None:
    """Training curves of each model and the validation confusion matrices."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, entries in history.items():
        if entries:
            training_curves(entries, f"{kind} model", folder / f"{kind}_curves.png")
    for kind, result in metrics.get("validation", {}).items():
        if result:
            confusion_matrix(
                result, f"{kind} model, validation", folder / f"{kind}_confusion.png"
            )


def training_curves(entries: list[dict[str, Any]], title: str, path: Path) -> None:
    epochs = np.arange(1, len(entries) + 1)
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key, axis in (("loss", loss_axis), ("accuracy", accuracy_axis)):
        axis.plot(epochs, [e.get(key) for e in entries], label="train")
        axis.plot(epochs, [e.get(f"val_{key}") for e in entries], label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        axis.legend()
    stage_ends = [
        i + 1
        for i in range(len(entries) - 1)
        if entries[i]["stage"] != entries[i + 1]["stage"]
    ]
    for end in stage_ends:
        for axis in (loss_axis, accuracy_axis):
            axis.axvline(end + 0.5, color="grey", linestyle=":")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def confusion_matrix(result: dict[str, Any], title: str, path: Path) -> None:
    matrix = np.asarray(result["confusion_matrix"])
    labels = result["labels"]
    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(labels)), labels, rotation=30)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        axis.text(col, row, str(count), ha="center", va="center", color=colour)
    axis.set_title(f"{title} (accuracy {result['accuracy']})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
