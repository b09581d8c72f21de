"""The shipped models and their card.

The files beside this module (``card.json``, ``full.keras``,
``triage.tflite``) are produced by ``farmeye train`` and installed with the
package. :func:`load_card` reads any model folder laid out the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHIPPED_DIR = Path(__file__).resolve().parent
CARD_FILE = "card.json"

VIEWS = ("identity", "flip_h", "flip_v", "rot180")
"""Views a model may average its scores over (test-time augmentation): the
photo as it is, mirrored left-right, mirrored top-bottom, turned half round.
A dropping photographed from above has no up or left, so each view is as
true a picture of it as the original."""


class ModelError(RuntimeError):
    """A model folder that is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of a card: where its file is and how to feed it."""

    kind: str
    path: Path
    input_size: int
    version: str
    healthy_threshold: float | None
    metrics: dict[str, Any]
    views: tuple[str, ...] = ("identity",)
    """The views whose scores are averaged into the verdict (see VIEWS)."""


@dataclass(frozen=True)
class ModelCard:
    """What ``card.json`` says about a set of models."""

    folder: Path
    version: str
    labels: tuple[str, ...]
    raw: dict[str, Any]

    def model(self, kind: str) -> ModelSpec:
        try:
            entry = self.raw["models"][kind]
        except KeyError:
            raise ModelError(
                f"{self.folder / CARD_FILE} describes no {kind!r} model"
            ) from None
        path = self.folder / entry["file"]
        views = tuple(entry.get("views", ["identity"]))
        unknown = [view for view in views if view not in VIEWS]
        if not views or views[0] != "identity" or unknown:
            raise ModelError(
                f"{self.folder / CARD_FILE}: views of {kind!r} must start with "
                f"identity and be some of {', '.join(VIEWS)}, got {list(views)}"
            )
        if not path.is_file():
            raise ModelError(
                f"model file {path} is missing; reinstall FarmEye or retrain"
            )
        return ModelSpec(
            kind=kind,
            path=path,
            input_size=int(entry["input_size"]),
            version=f"{self.version}/{kind}",
            healthy_threshold=entry.get("healthy_threshold"),
            metrics=entry.get("metrics", {}),
            views=views,
        )


def load_card(folder: Path | None = None) -> ModelCard:
    """Read the card of ``folder`` (the shipped models when None)."""
    folder = Path(folder) if folder is not None else SHIPPED_DIR
    path = folder / CARD_FILE
    try:
        raw = json.loads(path.read_text())
        return ModelCard(folder, str(raw["version"]), tuple(raw["labels"]), raw)
    except FileNotFoundError:
        raise ModelError(
            f"no model card at {path}; run `farmeye train` or reinstall FarmEye"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"model card {path} is corrupt: {exc}") from None


def resolve(model: str) -> ModelSpec:
    """Turn a CLI ``--model`` value into a spec.

    ``full`` and ``triage`` name the shipped models; anything else is a run
    folder (its full model is meant) or a model file beside its card.json,
    as ``farmeye train`` writes them.
    """
    if model in ("full", "triage"):
        return load_card().model(model)
    path = Path(model)
    if path.is_dir():
        return load_card(path).model("full")
    card = load_card(path.parent)
    for kind in ("full", "triage"):
        spec = card.model(kind)
        if spec.path.resolve() == path.resolve():
            return spec
    raise ModelError(f"{model} is not a model file listed in {path.parent / CARD_FILE}")
