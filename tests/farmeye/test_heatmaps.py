"""Evidence maps: stored small, painted over the photo on request."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from farmeye.heatmaps import MapError, decode_map, encode_map, render_overlay


def photo_pixels(side: int = 64) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (side, side, 3), dtype=np.uint8)


def test_map_survives_storage_to_within_one_level():
    grid = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    stored = encode_map(grid)
    assert len(stored) < 400
    np.testing.assert_allclose(decode_map(stored), grid, atol=0.5 / 255 + 1e-6)


def test_map_values_outside_zero_one_are_clipped():
    stored = encode_map(np.array([[-1.0, 0.5], [2.0, 1.0]], np.float32))
    np.testing.assert_allclose(
        decode_map(stored), [[0.0, 128 / 255], [1.0, 1.0]], atol=1e-6
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a png at all",
        b"\x89PNG\r\n\x1a\n truncated",
    ],
)
def test_unreadable_map_is_a_clear_error(data: bytes):
    with pytest.raises(MapError, match="unreadable"):
        decode_map(data)


def test_map_that_is_a_photo_is_refused():
    out = io.BytesIO()
    Image.fromarray(photo_pixels(), mode="RGB").save(out, format="PNG")
    with pytest.raises(MapError, match="RGB"):
        decode_map(out.getvalue())
    out = io.BytesIO()
    Image.fromarray(np.zeros((200, 200), np.uint8), mode="L").save(out, format="PNG")
    with pytest.raises(MapError, match="larger than a grid"):
        decode_map(out.getvalue())


def test_overlay_is_an_rgb_png_the_size_of_the_photo():
    pixels = photo_pixels()
    grid = np.zeros((3, 3), np.float32)
    grid[1, 1] = 1.0
    image = Image.open(io.BytesIO(render_overlay(pixels, grid)))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))
    painted = np.asarray(image).astype(int)
    centre, corner = painted[32, 32], painted[0, 0]
    # Strongest evidence in the middle: reddened there, untouched in a corner.
    assert centre[0] - centre[2] > int(pixels[32, 32, 0]) - int(pixels[32, 32, 2])
    assert np.array_equal(corner, pixels[0, 0])


def test_overlay_leaves_the_photo_where_there_is_no_evidence():
    pixels = photo_pixels()
    png = render_overlay(pixels, np.zeros((7, 7), np.float32))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
