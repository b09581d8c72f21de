"""The content-addressed image store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hub.store import DiskImageStore
from tests.hub.support import photo


def test_put_stores_under_sha256_and_is_idempotent(tmp_path: Path) -> None:
    """A photo lands at images/ab/cd/<sha>.jpg once, however often it is put."""
    store = DiskImageStore(tmp_path)
    data = photo(1)
    sha = hashlib.sha256(data).hexdigest()

    assert store.put(data) == sha
    assert store.put(data) == sha

    assert store.path(sha) == tmp_path / "images" / sha[:2] / sha[2:4] / f"{sha}.jpg"
    assert store.get(sha) == data and store.exists(sha)
    assert not any(p.name.endswith(".part") for p in tmp_path.rglob("*"))


def test_thumbnail_is_small_jpeg_made_once(tmp_path: Path) -> None:
    """The thumbnail is a JPEG of at most 256 px a side, kept for next time."""
    store = DiskImageStore(tmp_path)
    key = store.put(photo(2, (1280, 960)))

    first = store.thumbnail(key)
    store.thumbnails_dir.joinpath(key[:2], f"{key}.jpg").write_bytes(b"kept")

    assert first[:2] == b"\xff\xd8"
    assert store.thumbnail(key) == b"kept"


def test_keys_that_are_not_sha256_are_refused(tmp_path: Path) -> None:
    """A key with path characters never reaches the file system."""
    store = DiskImageStore(tmp_path)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.get("../../etc/passwd")
    with pytest.raises(FileNotFoundError):
        store.get("0" * 64)
