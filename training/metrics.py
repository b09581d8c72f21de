"""Classification metrics, calibration and the triage operating threshold."""

from __future__ import annotations

from typing import Any

import numpy as np

from farmeye.labels import HEALTHY, LABELS

HEALTHY_INDEX = LABELS.index(HEALTHY)


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts with rows = true label, columns = predicted, in :data:`LABELS` order."""
    matrix = np.zeros((len(LABELS), len(LABELS)), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def report(
    y_true: np.ndarray, scores: np.ndarray, y_pred: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class figures, confusion matrix and calibration."""
    if y_pred is None:
        y_pred = scores.argmax(axis=1)
    matrix = confusion(y_true, y_pred)
    per_class: dict[str, dict[str, float | int]] = {}
    f1s = []
    for i, label in enumerate(LABELS):
        tp = float(matrix[i, i])
        support = int(matrix[i].sum())
        predicted = float(matrix[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        per_class[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": support,
        }
        if support:
            f1s.append(f1)
    n = int(matrix.sum())
    return {
        "n": n,
        "accuracy": round(float(np.trace(matrix)) / n, 4) if n else 0.0,
        "macro_f1": round(float(np.mean(f1s)), 4) if f1s else 0.0,
        "labels": list(LABELS),
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class,
        "sick_recall": round(sick_recall(y_true, y_pred), 4),
        "expected_calibration_error": round(
            expected_calibration_error(y_true, scores), 4
        ),
    }


def sick_recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of photos of sick birds that were not called healthy."""
    sick = y_true != HEALTHY_INDEX
    if not sick.any():
        return 1.0
    return float(np.mean(y_pred[sick] != HEALTHY_INDEX))


def expected_calibration_error(
    y_true: np.ndarray, scores: np.ndarray, bins: int = 15
) -> float:
    """Gap between confidence and accuracy, averaged over confidence bins."""
    confidence = scores.max(axis=1)
    correct = scores.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = abs(confidence[inside].mean() - correct[inside].mean())
            error += inside.mean() * gap
    return float(error)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature T minimising the log loss of ``softmax(logits / T)``.

    The loss is convex in 1/T, so a golden-section search on log T finds it.
    """

    def nll(log_t: float) -> float:
        probs = softmax(logits / np.exp(log_t))
        picked = probs[np.arange(len(y_true)), y_true]
        return float(-np.mean(np.log(np.clip(picked, 1e-12, None))))

    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a = high - ratio * (high - low)
        b = low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


def triage_labels(scores: np.ndarray, healthy_threshold: float) -> np.ndarray:
    """Apply the triage rule: healthy only when its score reaches the threshold.

    Otherwise the verdict is the most likely sick label, so a doubtful photo is
    sent on as sick rather than waved through.
    """
    sick_scores = scores.copy()
    sick_scores[:, HEALTHY_INDEX] = -1.0
    labels: np.ndarray = sick_scores.argmax(axis=1)
    labels[scores[:, HEALTHY_INDEX] >= healthy_threshold] = HEALTHY_INDEX
    return labels


def healthy_threshold_for(
    y_true: np.ndarray, scores: np.ndarray, target_sick_recall: float
) -> float:
    """Lowest healthy-score threshold at which sick recall still reaches target.

    The lower the threshold, the more healthy birds are called healthy; the
    search takes the lowest one that keeps the sick recall, never below 0.5.
    """
    # Just above each observed score: a photo scoring exactly the threshold
    # would still be called healthy.
    observed = np.nextafter(scores[:, HEALTHY_INDEX], 2.0)
    candidates = np.unique(np.concatenate([observed, [0.5, 1.0]]))
    for threshold in candidates[candidates >= 0.5]:
        predicted = triage_labels(scores, float(threshold))
        if sick_recall(y_true, predicted) >= target_sick_recall:
            return float(threshold)
    return 1.0
