"""Generated coop-floor frames, for demos and tests: no hardware needed."""

from __future__ import annotations

import io
import itertools
import random

import numpy as np
from PIL import Image, ImageDraw

from edge_agent.cameras.base import Camera, Photo
from edge_agent.config import SyntheticCameraConfig

FLOOR_RGB = (150, 120, 85)
"""Litter-coloured background."""

DROPPING_RGB = ((90, 70, 40), (60, 50, 35), (120, 95, 60))


class SyntheticCamera(Camera):
    """Every frame differs: noisy litter with a few random droppings."""

    name = "synthetic"

    def __init__(self, config: SyntheticCameraConfig) -> None:
        self.config = config
        self._frames = itertools.count(1)
        self._random = random.Random()
        self._noise = np.random.default_rng()

    def capture(self) -> Photo:
        frame = next(self._frames)
        image = self._floor()
        self._draw_droppings(image)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=self.config.jpeg_quality)
        return Photo(buffer.getvalue(), meta={"camera": self.name, "frame": frame})

    def _floor(self) -> Image.Image:
        shape = (self.config.height, self.config.width, 3)
        noise = self._noise.integers(-25, 26, size=shape, dtype=np.int16)
        pixels = np.clip(noise + np.array(FLOOR_RGB, dtype=np.int16), 0, 255)
        return Image.fromarray(pixels.astype(np.uint8), "RGB")

    def _draw_droppings(self, image: Image.Image) -> None:
        draw = ImageDraw.Draw(image)
        side = min(image.size)
        for _ in range(self._random.randint(1, 6)):
            radius = self._random.randint(side // 40 + 1, side // 10 + 2)
            x = self._random.randrange(image.width)
            y = self._random.randrange(image.height)
            colour = self._random.choice(DROPPING_RGB)
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), colour)
