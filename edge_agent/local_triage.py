"""Optional triage on the camera itself, with the shipped int8 model.

A Pi 4 or 5 runs the model in a few tens of milliseconds; a Pi Zero 2 W can,
at a cost in memory. The verdict travels in the upload header's ``triage``
field and is advisory: the hub runs its own triage either way. It needs the
``ai-edge-litert`` runtime (``farmeye[triage]``), never TensorFlow.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from farmeye.models import ModelError

if TYPE_CHECKING:
    from farmeye.triage import TriageModel

logger = logging.getLogger(__name__)


class LocalTriage:
    """The shipped triage model, loaded once."""

    def __init__(self, model: TriageModel) -> None:
        self.model = model

    @classmethod
    def load(cls, threads: int = 1) -> LocalTriage:
        """Load the shipped model; ModelError names the package if LiteRT is missing."""
        from farmeye.triage import TriageModel

        model = TriageModel.shipped(threads)
        logger.info("on-device triage uses model %s", model.version)
        return cls(model)

    def verdict(self, data: bytes) -> dict[str, Any] | None:
        """The ``triage`` field of the upload header, or None if undecodable."""
        from farmeye.imaging import ImageError

        try:
            label, scores = self.model.classify(data)
        except ImageError as exc:
            logger.warning("on-device triage skipped a photo: %s", exc)
            return None
        return {
            "label": label,
            "scores": {
                name: min(max(value, 0.0), 1.0) for name, value in scores.items()
            },
            "model_version": self.model.version,
        }


__all__ = ["LocalTriage", "ModelError"]
