"""Labelled photo sets: loading, hashing and a group-aware split.

A data set is a folder with one sub-folder per label. An optional
``manifest.csv`` (``path,label,sha1,near_duplicate_group``) groups near
duplicates; the split keeps every group on one side, so that a re-encoded copy
of a validation photo never sits in the training set.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from farmeye.labels import LABELS

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


@dataclass(frozen=True)
class Sample:
    """One labelled photo of a data set."""

    path: Path
    label: str
    group: str


def load_samples(dataset_dir: Path) -> list[Sample]:
    """List the labelled photos of ``dataset_dir``, sorted by path.

    Uses ``manifest.csv`` when present, otherwise one folder per label, each
    photo its own group. Folders and files that name no label are ignored.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"data set folder {dataset_dir} does not exist")
    manifest = dataset_dir / "manifest.csv"
    samples = (
        _from_manifest(dataset_dir, manifest)
        if manifest.is_file()
        else _from_folders(dataset_dir)
    )
    if not samples:
        raise ValueError(
            f"no labelled photos under {dataset_dir}: expected one folder per "
            f"label ({', '.join(LABELS)}) holding JPEG or PNG files"
        )
    return sorted(samples, key=lambda sample: str(sample.path))


def _from_manifest(root: Path, manifest: Path) -> list[Sample]:
    with manifest.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    return [
        Sample(root / row["path"], row["label"], f"g{row['near_duplicate_group']}")
        for row in rows
        if row["label"] in LABELS and (root / row["path"]).is_file()
    ]


def _from_folders(root: Path) -> list[Sample]:
    samples = []
    for label in LABELS:
        folder = root / label
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                samples.append(Sample(path, label, f"f{path.name}"))
    return samples


def dataset_hash(samples: Iterable[Sample]) -> str:
    """SHA-256 over every photo's label and bytes, independent of where it lies."""
    digest = hashlib.sha256()
    entries = sorted(
        (sample.label, hashlib.sha1(sample.path.read_bytes()).hexdigest())  # noqa: S324
        for sample in samples
    )
    for label, content in entries:
        digest.update(f"{label}:{content}\n".encode())
    return digest.hexdigest()


def split_by_group(
    samples: Sequence[Sample], val_share: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, validation) with no group on both sides.

    Groups are drawn per label (a group counts under its first photo's label),
    so each label keeps about ``val_share`` of its photos in validation.
    """
    if not 0.0 < val_share < 1.0:
        raise ValueError(f"val_share must be between 0 and 1, got {val_share}")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group].append(sample)

    by_label: dict[str, list[str]] = defaultdict(list)
    for name in sorted(groups):
        by_label[groups[name][0].label].append(name)

    rng = random.Random(seed)
    val_groups: set[str] = set()
    for label in sorted(by_label):
        names = by_label[label]
        rng.shuffle(names)
        target = val_share * sum(len(groups[name]) for name in names)
        taken = 0
        for name in names:
            if taken >= target:
                break
            val_groups.add(name)
            taken += len(groups[name])

    train = [s for s in samples if s.group not in val_groups]
    val = [s for s in samples if s.group in val_groups]
    return train, val


def class_weights(labels: Iterable[str | Sample]) -> dict[int, float]:
    """Weights that make every label count as much as the others in the loss.

    Takes samples or bare label names; keys are model output indices.
    """
    counts = {label: 0 for label in LABELS}
    for item in labels:
        counts[item.label if isinstance(item, Sample) else item] += 1
    present = {label: n for label, n in counts.items() if n}
    total = sum(present.values())
    return {
        LABELS.index(label): total / (len(present) * n) for label, n in present.items()
    }


def default_dataset_dir() -> Path:
    """Where a checkout finds the shared training photos (beside the repo)."""
    return Path(__file__).resolve().parents[2] / "shared/datasets/poultry-droppings"
