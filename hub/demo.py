"""The demo of ``farmeye up --demo``: a simulated coop camera.

Photos are drawn here rather than copied from the dataset: wood-shaving
litter with droppings whose colour hints at a condition (brown with a white
cap for healthy, blood-red for coccidiosis, pasty white for salmonella, green
and watery for Newcastle). The shipped model was not trained on drawings, so
its verdicts on them only show the data path working, not its accuracy.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
from datetime import UTC, datetime

from PIL import Image, ImageDraw, ImageFilter

from farmeye.auth import DeviceCredentials
from farmeye.device_client import DeviceClient, HubError, LinkClosed
from farmeye.labels import LABELS

logger = logging.getLogger(__name__)

PHOTO_SIZE_PX = (640, 480)
"""Size of the demo photos; real cameras send more, the demo stays light."""

HEALTH_EVERY = 10
"""A health report goes with every this many photos."""

_DROPPING_COLOURS = {
    "healthy": ((96, 70, 40), (235, 232, 220)),
    "coccidiosis": ((120, 30, 25), (160, 40, 35)),
    "salmonella": ((215, 210, 190), (240, 238, 228)),
    "newcastle": ((70, 110, 50), (120, 150, 80)),
}


def synthetic_photo(
    rng: random.Random, label: str, size_px: tuple[int, int] = PHOTO_SIZE_PX
) -> bytes:
    """A JPEG of litter with a few droppings that look like ``label``."""
    width, height = size_px
    litter = Image.new("RGB", size_px, (196, 170, 120))
    draw = ImageDraw.Draw(litter)
    for _ in range(900 * width * height // (640 * 480)):
        x, y = rng.randrange(width), rng.randrange(height)
        shade = rng.randrange(150, 230)
        colour = (shade, int(shade * 0.85), int(shade * 0.55))
        end = (x + rng.randrange(4, 18), y + rng.randrange(-4, 5))
        draw.line((x, y, *end), fill=colour, width=2)
    body, cap = _DROPPING_COLOURS[label]
    for _ in range(rng.randrange(2, 5)):
        _dropping(draw, rng, body, cap, size_px)
    photo = litter.filter(ImageFilter.GaussianBlur(0.8))
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=88)
    return out.getvalue()


def _dropping(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    body: tuple[int, int, int],
    cap: tuple[int, int, int],
    size_px: tuple[int, int],
) -> None:
    width, height = size_px
    x, y = rng.randrange(80, width - 80), rng.randrange(80, height - 80)
    rx, ry = rng.randrange(25, 60), rng.randrange(18, 45)
    draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=body)
    cx, cy = x + rng.randrange(-rx // 3, rx // 3 + 1), y - ry // 3
    draw.ellipse((cx - rx // 3, cy - ry // 3, cx + rx // 3, cy + ry // 3), fill=cap)


class DemoCamera:
    """Uploads a drawn photo every ``interval_s``, reconnecting as needed."""

    def __init__(
        self,
        credentials: DeviceCredentials,
        address: tuple[str, int],
        interval_s: float = 3.0,
        seed: int = 0,
    ) -> None:
        self.credentials = credentials
        self.address = address
        self.interval_s = interval_s
        self.rng = random.Random(seed)
        self.uploaded = 0

    def next_label(self) -> str:
        """Mostly healthy, with runs of one sickness now and then."""
        if self.rng.random() < 0.6:
            return "healthy"
        return self.rng.choice(LABELS[1:])

    async def run(self) -> None:
        """Upload until cancelled; a refused or lost link is retried later."""
        while True:
            try:
                async with DeviceClient(self.credentials, *self.address) as client:
                    await self._upload_forever(client)
            except (HubError, LinkClosed, OSError, TimeoutError) as exc:
                logger.info("demo camera lost the hub (%s); retrying", exc)
            except Exception:
                logger.exception("demo camera failed; retrying")
            await asyncio.sleep(self.interval_s)

    async def _upload_forever(self, client: DeviceClient) -> None:
        while True:
            label = self.next_label()
            data = await asyncio.get_running_loop().run_in_executor(
                None, synthetic_photo, self.rng, label
            )
            await client.upload(data, meta={"demo_drawn_as": label})
            self.uploaded += 1
            if self.uploaded % HEALTH_EVERY == 1:
                await client.send_health(
                    agent_version="farmeye-demo",
                    camera_ok=True,
                    spool_depth=0,
                    last_capture_at=datetime.now(UTC),
                )
            await asyncio.sleep(self.interval_s)
