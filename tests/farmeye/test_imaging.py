"""Tests of the shared preprocessing and its handling of bad photos."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from farmeye.imaging import (
    ImageError,
    open_image,
    preprocess,
    thumbnail,
    trim_white_border,
)


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def droppings_like(width: int = 320, height: int = 240) -> Image.Image:
    """A brown floor with a darker blob: enough structure to survive resizing."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(90, 140, (height, width, 3), dtype=np.uint8)
    pixels[height // 3 : height // 2, width // 3 : width // 2] = (60, 30, 20)
    return Image.fromarray(pixels)


def test_preprocess_returns_uint8_square_of_requested_size():
    """A camera-sized JPEG becomes a size x size x 3 uint8 array."""
    pixels = preprocess(jpeg(droppings_like(1280, 960)), 224)
    assert pixels.shape == (224, 224, 3)
    assert pixels.dtype == np.uint8


def test_preprocess_is_deterministic():
    """The same bytes always give the same pixels."""
    data = jpeg(droppings_like())
    assert np.array_equal(preprocess(data, 128), preprocess(data, 128))


def test_draft_decode_stays_close_to_full_decode():
    """JPEG draft mode changes pixels only slightly after the resize."""
    data = jpeg(droppings_like(1280, 960))
    fast = preprocess(data, 224).astype(np.int16)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    side = min(image.size)
    left = (image.width - side) // 2
    slow = image.crop((left, 0, left + side, side)).resize(
        (224, 224), Image.Resampling.BILINEAR
    )
    assert np.abs(fast - np.asarray(slow, np.int16)).mean() < 6


def test_white_letterbox_is_trimmed():
    """White bands added by curation are cut off before the square crop."""
    photo = droppings_like(200, 120)
    boxed = Image.new("RGB", (200, 200), (255, 255, 255))
    boxed.paste(photo, (0, 40))
    trimmed = trim_white_border(boxed)
    assert trimmed.size == (200, 120)


def test_all_white_photo_is_not_trimmed_to_nothing():
    """A blank white photo keeps its size rather than becoming empty."""
    blank = Image.new("RGB", (100, 100), (255, 255, 255))
    assert trim_white_border(blank).size == (100, 100)


def test_png_with_alpha_is_flattened_on_white():
    """Transparent pixels read as white, not black, and the photo decodes."""
    image = Image.new("RGBA", (64, 64), (200, 0, 0, 0))
    image.paste((10, 120, 10, 255), (16, 16, 48, 48))
    pixels = preprocess(png(image), 32)
    assert pixels.shape == (32, 32, 3)
    assert tuple(pixels[16, 16]) == (10, 120, 10)


def test_truncated_jpeg_is_a_clear_error():
    """A JPEG cut short raises ImageError, not a Pillow internal error."""
    data = jpeg(droppings_like(640, 480))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        preprocess(data[: len(data) // 2], 224)


def test_text_file_is_a_clear_error():
    """Bytes that are not an image raise ImageError saying so."""
    with pytest.raises(ImageError, match="not an image"):
        preprocess(b"hello, this is not a photo\n" * 10, 224)


def test_empty_payload_is_a_clear_error():
    """Zero bytes raise ImageError."""
    with pytest.raises(ImageError):
        preprocess(b"", 224)


def test_one_pixel_image_is_refused():
    """A 1x1 image is too small to say anything about droppings."""
    with pytest.raises(ImageError, match="at least"):
        preprocess(png(Image.new("RGB", (1, 1))), 224)


def bomb_png(side: int) -> bytes:
    """A valid PNG of side x side black pixels that is tiny on disk."""
    raw = b"".join(b"\x00" + bytes(side) for _ in range(side))
    header = (side).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding():
    """A 20000 x 20000 PNG is refused from its header, without decoding it."""
    data = bomb_png(20_000)
    assert len(data) < 2_000_000
    with pytest.raises(ImageError, match="too large|over the limit"):
        open_image(data)


def test_thumbnail_is_a_small_jpeg():
    """Thumbnails fit the requested side and are JPEG."""
    data = thumbnail(jpeg(droppings_like(1280, 960)), side=200)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    assert max(image.size) <= 200
