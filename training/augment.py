"""Augmentations that make curated photos look like coop floors.

They start from the decoded, border-trimmed photo (as :mod:`farmeye.imaging`
makes it) and end in the same resize, so an augmented view differs from the
production input only in what the augmentation chose to change. Hue is never
shifted: the colour of droppings is the diagnosis.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from farmeye.imaging import to_array


def random_view(
    image: Image.Image, sizes: tuple[int, ...], rng: random.Random
) -> list[np.ndarray]:
    """Return one random view of ``image`` at each of ``sizes`` (same crop)."""
    view = _random_crop(image, rng)
    view = _random_flip_rotate(view, rng)
    view = _random_photometric(view, rng)
    return [to_array(view, size) for size in sizes]


def _random_crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """Crop a square-ish region covering 35-100 % of the photo."""
    width, height = image.size
    for _ in range(10):
        area = rng.uniform(0.35, 1.0) * width * height
        aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
        crop_w = int(round(math.sqrt(area * aspect)))
        crop_h = int(round(math.sqrt(area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = rng.randint(0, width - crop_w)
            top = rng.randint(0, height - crop_h)
            return image.crop((left, top, left + crop_w, top + crop_h))
    side = min(width, height)
    return image.crop((0, 0, side, side))


def _random_flip_rotate(image: Image.Image, rng: random.Random) -> Image.Image:
    """Droppings have no up or down: any flip or quarter turn is a real photo."""
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    turns = rng.randrange(4)
    if turns:
        image = image.rotate(90 * turns, expand=True)
    return image


def _random_photometric(image: Image.Image, rng: random.Random) -> Image.Image:
    """Vary light, contrast, focus and compression as cheap cameras do."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.75, 1.25))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.85, 1.15))
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    if rng.random() < 0.3:
        encoded = io.BytesIO()
        image.save(encoded, format="JPEG", quality=rng.randint(35, 90))
        image = Image.open(io.BytesIO(encoded.getvalue())).convert("RGB")
    return image
