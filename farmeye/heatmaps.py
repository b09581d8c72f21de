"""Evidence maps: stored small by the workers, painted over photos by the hub.

A worker's Grad-CAM map is a coarse grid (7 x 7 for a 224-pixel model) of
values in [0, 1]. :func:`encode_map` keeps it as an 8-bit greyscale PNG of
that grid, a hundred-odd bytes that any image library can read back. Painting
it over the photo (:func:`render_overlay`) is presentation, so it happens
where someone looks at it: the hub does it on the first request and keeps
the result, instead of every worker spending milliseconds per sick photo on
an image that may never be opened.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

HEATMAP_OPACITY = 0.5
"""Weight of the colour map where the evidence is strongest (0 to 1)."""

PNG_COMPRESS_LEVEL = 1
"""zlib level of the overlay PNG: fast to write; it is cached anyway."""

MAX_MAP_SIDE = 64
"""Largest evidence grid accepted back from storage."""

_COLOUR_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array(
    [
        [0, 0, 160],  # dark blue: no evidence
        [0, 160, 255],
        [40, 220, 80],
        [255, 220, 0],
        [230, 20, 0],  # red: strongest evidence
    ],
    dtype=np.float32,
)


class MapError(ValueError):
    """Stored bytes that are not an evidence map."""


def encode_map(cam: np.ndarray) -> bytes:
    """An evidence grid (h, w) in [0, 1] as an 8-bit greyscale PNG."""
    levels = np.rint(np.clip(np.asarray(cam, np.float32), 0.0, 1.0) * 255)
    out = io.BytesIO()
    Image.fromarray(levels.astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def decode_map(data: bytes) -> np.ndarray:
    """The grid stored by :func:`encode_map`, as float32 in [0, 1]."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG" or image.mode != "L":
                raise MapError(f"evidence map is {image.format} {image.mode}")
            if max(image.size) > MAX_MAP_SIDE:
                raise MapError(f"evidence map is {image.size}, larger than a grid")
            levels = np.asarray(image, dtype=np.float32)
    except MapError:
        raise
    except Exception as exc:  # Pillow raises many types for unreadable data
        raise MapError(f"evidence map is unreadable ({type(exc).__name__})") from None
    return levels / 255.0


def _colour_table() -> np.ndarray:
    levels = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(levels, _COLOUR_STOPS, _COLOURS[:, i]) for i in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint16)


_COLOUR_TABLE = _colour_table()
"""RGB of each of 256 evidence levels: a lookup is far cheaper than np.interp."""


def render_overlay(pixels: np.ndarray, cam: np.ndarray) -> bytes:
    """PNG of ``pixels`` (h, w, 3 uint8) with ``cam`` (any size) painted over.

    The map is scaled up smoothly to the photo; where it is zero the photo
    shows through unchanged, so healthy-looking areas stay readable.
    """
    height, width = pixels.shape[:2]
    small = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F")
    heat = np.asarray(
        small.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32
    )
    levels = np.rint(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    # Integer blend: weight = opacity x level, out of 256.
    weight = np.rint(levels.astype(np.float32) * (HEATMAP_OPACITY * 256 / 255))
    weight = weight.astype(np.uint16)[..., None]
    blended = (
        pixels.astype(np.uint16) * (256 - weight) + _COLOUR_TABLE[levels] * weight
    ) >> 8
    out = io.BytesIO()
    Image.fromarray(blended.astype(np.uint8), mode="RGB").save(
        out, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return out.getvalue()
