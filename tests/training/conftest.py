"""Fixtures for training tests: the shared ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import pytest

WEIGHTS = "pretrained/mobilenet_v2_1.0_imagenet_no_top.weights.h5"


@pytest.fixture(scope="session")
def backbone_weights() -> Path:
    path = Path(__file__).resolve().parents[3] / "shared" / WEIGHTS
    if not path.is_file():
        pytest.skip(f"ImageNet backbone weights not found at {path}")
    return path
