"""Image preprocessing shared by training, triage and full analysis.

Every model in FarmEye sees pixels produced by :func:`preprocess`: the same
decode, orientation, border trim, square crop and resize, whether the photo
comes from the training set, a coop camera or a manual upload. Models take
``uint8`` RGB and scale it themselves, so nothing here depends on a model.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

MAX_IMAGE_PIXELS = 40_000_000
"""Largest photo accepted (width x height); larger ones are refused undecoded."""

MIN_IMAGE_SIDE = 16
"""Smallest accepted width or height in pixels."""

WHITE_LEVEL = 235
"""A pixel whose every channel is at least this is counted as letterbox white."""

WHITE_LINE_SHARE = 0.97
"""A border row or column is trimmed when this share of its pixels is white."""


class ImageError(ValueError):
    """A payload that cannot be turned into a photo a model can read."""


def open_image(data: bytes, *, draft_side: int | None = None) -> Image.Image:
    """Decode ``data`` into an upright RGB image, or raise :class:`ImageError`.

    ``draft_side`` lets a JPEG decoder skip detail that a later resize to that
    side would throw away; it cuts the decode of a camera frame several-fold.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large to decode safely: {exc}") from None
    except Exception as exc:  # Pillow raises many types for unreadable data
        raise ImageError(
            "payload is not an image Pillow can read "
            f"({type(exc).__name__}); send a JPEG or PNG photo"
        ) from None

    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"image is {width}x{height} pixels, over the limit of "
            f"{MAX_IMAGE_PIXELS} pixels; send a smaller photo"
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError(
            f"image is {width}x{height} pixels; each side must be at least "
            f"{MIN_IMAGE_SIDE}"
        )

    if draft_side is not None and image.format == "JPEG":
        image.draft("RGB", (draft_side, draft_side))
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except Exception as exc:
        raise ImageError(
            f"image data is truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from None
    return _to_rgb(upright)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white, as the curated photos are, and drop it."""
    if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def trim_white_border(image: Image.Image) -> Image.Image:
    """Cut uniform white letterbox bands from the edges of ``image``.

    Curated photos were padded to a square on white; camera frames never are.
    Trimming makes both look alike to a model. A photo that is almost all white
    is returned unchanged rather than cut to nothing.
    """
    pixels = np.asarray(image)
    white = np.all(pixels >= WHITE_LEVEL, axis=2)
    keep_rows = np.flatnonzero(white.mean(axis=1) < WHITE_LINE_SHARE)
    keep_cols = np.flatnonzero(white.mean(axis=0) < WHITE_LINE_SHARE)
    if keep_rows.size < MIN_IMAGE_SIDE or keep_cols.size < MIN_IMAGE_SIDE:
        return image
    top, bottom = int(keep_rows[0]), int(keep_rows[-1]) + 1
    left, right = int(keep_cols[0]), int(keep_cols[-1]) + 1
    if (top, left, bottom, right) == (0, 0, image.height, image.width):
        return image
    return image.crop((left, top, right, bottom))


def center_square(image: Image.Image) -> Image.Image:
    """Return the largest centred square of ``image``."""
    side = min(image.size)
    left = (image.width - side) // 2
    top = (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def to_array(image: Image.Image, size: int) -> np.ndarray:
    """Resize ``image`` to ``size`` x ``size`` and return uint8 HxWx3 pixels."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def preprocess(data: bytes, size: int) -> np.ndarray:
    """Turn encoded photo bytes into the ``size`` x ``size`` uint8 RGB model input.

    Raises :class:`ImageError` with a reason for anything that is not a usable
    photo: not an image, truncated, too small or too large.
    """
    image = open_image(data, draft_side=size)
    return to_array(center_square(trim_white_border(image)), size)


def thumbnail(data: bytes, side: int = 256) -> bytes:
    """Return a JPEG thumbnail of at most ``side`` pixels for dashboards."""
    image = open_image(data, draft_side=side)
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()
