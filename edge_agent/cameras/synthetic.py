"""Generated coop-floor frames, for demos and tests: no hardware needed."""

from __future__ import annotations

import io
import itertools
import random

from PIL import Image, ImageDraw, ImageOps

from edge_agent.cameras.base import Camera, Photo
from edge_agent.config import SyntheticCameraConfig

FLOOR_DARK_RGB = (110, 85, 55)
FLOOR_LIGHT_RGB = (190, 155, 115)
"""Litter colours the background noise runs between."""

NOISE_SIGMA = 40.0

DROPPING_RGB = ((90, 70, 40), (60, 50, 35), (120, 95, 60))


class SyntheticCamera(Camera):
    """Every frame differs: noisy litter with a few random droppings."""

    name = "synthetic"

    def __init__(self, config: SyntheticCameraConfig) -> None:
        self.config = config
        self._frames = itertools.count(1)
        self._random = random.Random()

    def capture(self) -> Photo:
        frame = next(self._frames)
        image = self._floor()
        self._draw_droppings(image)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=self.config.jpeg_quality)
        return Photo(buffer.getvalue(), meta={"camera": self.name, "frame": frame})

    def _floor(self) -> Image.Image:
        """Grey noise tinted to litter colours: no two frames alike, no numpy."""
        size = (self.config.width, self.config.height)
        noise = Image.effect_noise(size, NOISE_SIGMA)
        return ImageOps.colorize(noise, FLOOR_DARK_RGB, FLOOR_LIGHT_RGB)

    def _draw_droppings(self, image: Image.Image) -> None:
        draw = ImageDraw.Draw(image)
        side = min(image.size)
        for _ in range(self._random.randint(1, 6)):
            radius = self._random.randint(side // 40 + 1, side // 10 + 2)
            x = self._random.randrange(image.width)
            y = self._random.randrange(image.height)
            colour = self._random.choice(DROPPING_RGB)
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), colour)
