"""Tests of data set loading, hashing and the group-aware split."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from farmeye.labels import LABELS
from training.dataset import (
    Sample,
    class_weights,
    dataset_hash,
    load_samples,
    split_by_group,
)


def write_photo(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.BytesIO()
    Image.new("RGB", (40, 40), (shade, 80, 40)).save(out, format="JPEG")
    path.write_bytes(out.getvalue())


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    for i, label in enumerate(LABELS):
        for j in range(3):
            write_photo(tmp_path / label / f"{label}-{j}.jpg", 20 * i + j)
    (tmp_path / "README.md").write_text("not a label")
    (tmp_path / "unknown").mkdir()
    write_photo(tmp_path / "unknown" / "x.jpg", 1)
    (tmp_path / "healthy" / "notes.txt").write_text("ignored")
    return tmp_path


def test_folder_layout_lists_only_labelled_photos(folder_dataset: Path):
    """Folders per label are read; other files and folders are ignored."""
    samples = load_samples(folder_dataset)
    assert len(samples) == 3 * len(LABELS)
    assert {s.label for s in samples} == set(LABELS)


def test_missing_folder_is_a_clear_error(tmp_path: Path):
    """A data set path that does not exist names itself in the error."""
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_samples(tmp_path / "nope")


def test_empty_folder_says_what_was_expected(tmp_path: Path):
    """A folder without label sub-folders explains the expected layout."""
    with pytest.raises(ValueError, match="one folder per"):
        load_samples(tmp_path)


def test_hash_ignores_location_but_not_content(folder_dataset: Path, tmp_path: Path):
    """Moving a data set keeps its hash; changing one photo changes it."""
    copy = tmp_path / "copy"
    shutil.copytree(folder_dataset, copy)
    original = dataset_hash(load_samples(folder_dataset))
    assert dataset_hash(load_samples(copy)) == original
    write_photo(copy / "healthy" / "healthy-0.jpg", 255)
    assert dataset_hash(load_samples(copy)) != original


def test_split_keeps_every_group_on_one_side():
    """No near-duplicate group appears in both train and validation."""
    samples = [
        Sample(Path(f"/x/{i}.jpg"), LABELS[i % 4], f"g{i // 3}") for i in range(600)
    ]
    train, val = split_by_group(samples, 0.2, seed=3)
    assert {s.group for s in train}.isdisjoint({s.group for s in val})
    assert len(train) + len(val) == len(samples)
    assert 0.15 < len(val) / len(samples) < 0.25


def test_split_on_the_real_manifest_is_group_disjoint(dataset_dir: Path):
    """The shipped data set's near-duplicate groups never straddle the split."""
    samples = load_samples(dataset_dir)
    train, val = split_by_group(samples, 0.15, seed=0)
    assert {s.group for s in train}.isdisjoint({s.group for s in val})
    for label in LABELS:
        share = sum(s.label == label for s in val) / sum(
            s.label == label for s in samples
        )
        assert 0.1 < share < 0.25, label


def test_split_is_reproducible_from_its_seed():
    """The same seed gives the same split."""
    samples = [Sample(Path(f"/x/{i}.jpg"), LABELS[i % 4], f"g{i}") for i in range(80)]
    assert split_by_group(samples, 0.25, 7) == split_by_group(samples, 0.25, 7)


def test_class_weights_balance_labels():
    """Weight times count is the same for every present label."""
    samples = [Sample(Path(f"/{i}"), "healthy", "a") for i in range(30)] + [
        Sample(Path(f"/n{i}"), "newcastle", "b") for i in range(10)
    ]
    weights = class_weights(samples)
    assert weights[LABELS.index("healthy")] * 30 == pytest.approx(
        weights[LABELS.index("newcastle")] * 10
    )
