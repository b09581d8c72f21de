"""Tests of metrics, temperature calibration and the triage threshold."""

from __future__ import annotations

import numpy as np

from farmeye.labels import LABELS
from training.metrics import (
    expected_calibration_error,
    fit_temperature,
    healthy_threshold_for,
    report,
    sick_recall,
    softmax,
    triage_labels,
)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(true_logits): calibrated at temperature 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, len(LABELS)))
    probs = softmax(logits)
    labels = np.array([rng.choice(len(LABELS), p=p) for p in probs])
    return logits, labels


def test_temperature_recovers_overconfidence():
    """Logits scaled up 3x are calibrated back with T close to 3."""
    logits, labels = synthetic(6000, seed=1)
    assert abs(fit_temperature(logits * 3.0, labels) - 3.0) < 0.35


def test_calibration_lowers_expected_calibration_error():
    """Dividing by the fitted temperature reduces ECE of overconfident scores."""
    logits, labels = synthetic(4000, seed=2)
    hot = logits * 4.0
    temperature = fit_temperature(hot, labels)
    before = expected_calibration_error(labels, softmax(hot))
    after = expected_calibration_error(labels, softmax(hot / temperature))
    assert after < before / 2


def test_report_counts_match_confusion_matrix():
    """Per-class support and accuracy agree with the confusion matrix."""
    y = np.array([0, 0, 1, 2, 3, 3])
    scores = np.eye(4)[[0, 1, 1, 2, 3, 0]]
    result = report(y, scores)
    matrix = np.array(result["confusion_matrix"])
    assert matrix.sum() == 6
    assert result["accuracy"] == round(4 / 6, 4)
    assert result["per_class"]["healthy"]["support"] == 2
    assert result["per_class"]["newcastle"]["recall"] == 0.5
    assert result["labels"] == list(LABELS)


def test_triage_rule_calls_doubtful_photos_sick():
    """Below the healthy threshold the most likely sick label wins."""
    scores = np.array([[0.7, 0.2, 0.05, 0.05], [0.95, 0.03, 0.01, 0.01]])
    assert triage_labels(scores, 0.9).tolist() == [1, 0]


def test_threshold_reaches_the_target_sick_recall():
    """The chosen threshold gives at least the requested sick recall."""
    logits, labels = synthetic(3000, seed=4)
    scores = softmax(logits)
    threshold = healthy_threshold_for(labels, scores, 0.99)
    achieved = sick_recall(labels, triage_labels(scores, threshold))
    assert achieved >= 0.99
    looser = sick_recall(labels, triage_labels(scores, 0.5))
    assert looser <= achieved
