"""The content-addressed image store."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from hub.store import DiskImageStore, StoreError, StoreFull
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


def test_put_keeps_the_free_space_reserve(tmp_path: Path) -> None:
    """A new photo that would eat into min_free_bytes is refused and not
    written; one already stored is still found, since it costs nothing."""
    kept = photo(3)
    key = DiskImageStore(tmp_path).put(kept)
    free = DiskImageStore(tmp_path).free_bytes()
    store = DiskImageStore(tmp_path, min_free_bytes=free + 1)

    with pytest.raises(StoreFull, match="kept free"):
        store.put(photo(4))

    assert store.put(kept) == key
    assert store.space_problem() is not None
    assert [p.name for p in tmp_path.rglob("*.jpg")] == [f"{key}.jpg"]
    assert not any(p.name.endswith(".part") for p in tmp_path.rglob("*"))
    assert DiskImageStore(tmp_path, min_free_bytes=1).space_problem() is None


def test_a_store_whose_folder_vanished_refuses_with_a_store_error(
    tmp_path: Path,
) -> None:
    """With the photo folder gone (a disk unmounted under the hub), the
    free-space check fails as a StoreError, which uploads turn into a
    retryable refusal, not as a bare OSError."""
    store = DiskImageStore(tmp_path, min_free_bytes=1)
    shutil.rmtree(store.images_dir)

    with pytest.raises(StoreError, match="cannot read the free space"):
        store.put(photo(5))
    with pytest.raises(StoreError, match="cannot read the free space"):
        store.space_problem()
