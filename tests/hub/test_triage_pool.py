"""Triage in worker processes: verdicts for photos, clean errors for the rest."""

from __future__ import annotations

import asyncio

from farmeye.labels import LABELS
from farmeye.models import load_card
from hub.triage_pool import TriageOutcome, TriagePool
from tests.hub.support import photo
from tests.hub.test_ingest_faults import png_bomb


def test_pool_gives_verdicts_and_survives_bad_photos() -> None:
    """Photos get a label and scores; junk and bombs get an error, the pool lives."""

    async def scenario() -> list[TriageOutcome]:
        pool = TriagePool(processes=1)
        try:
            await pool.warm_up()
            inputs = [photo(1), b"junk", png_bomb(), photo(2)]
            return [await pool.classify(data) for data in inputs]
        finally:
            pool.close()

    good, junk, bomb, after = asyncio.run(scenario())
    assert good.ok and good.label in LABELS and set(good.scores) == set(LABELS)
    assert good.model_version == load_card().model("triage").version
    assert not junk.ok and "not an image" in (junk.error or "")
    assert not bomb.ok and "too large" in (bomb.error or "")
    assert after.ok
