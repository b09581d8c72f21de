"""The four labels FarmEye diagnoses, in the order every model outputs them."""

from __future__ import annotations

LABELS: tuple[str, ...] = ("healthy", "coccidiosis", "salmonella", "newcastle")
"""Output order of every model: index i of a score vector is ``LABELS[i]``."""

HEALTHY = "healthy"
SICK_LABELS: tuple[str, ...] = tuple(label for label in LABELS if label != HEALTHY)


def label_index(label: str) -> int:
    """Return the model output index of ``label``, or raise ValueError."""
    try:
        return LABELS.index(label)
    except ValueError:
        raise ValueError(
            f"unknown label {label!r}; expected one of {', '.join(LABELS)}"
        ) from None
