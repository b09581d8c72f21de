"""Deleting photos older than ``photo_retention_days``.

A hub keeps every photo unless told otherwise, and a disk that fills up
stops it taking new ones (:class:`hub.store.DiskImageStore`). With a
retention period, a background round each hour deletes the files of
captures older than that whose analysis is settled, oldest first, and marks
their rows; the rows, verdicts and evidence grids stay, so history and
alerts are unchanged, and the image routes answer 410 Gone. The file goes
before the mark, so a hub that dies in between finds the row again next
round and finishes the job.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from hub import repository
from hub.database import Database
from hub.store import ImageStore

logger = logging.getLogger(__name__)

ROUND_INTERVAL_S = 3600.0
"""Seconds between retention rounds."""

BATCH = 500
"""Photos deleted per transaction."""


class Retention:
    """Deletes photos older than ``days`` in rounds."""

    def __init__(
        self,
        database: Database,
        store: ImageStore,
        days: float,
        deleted: Counter | None = None,
        interval_s: float = ROUND_INTERVAL_S,
    ) -> None:
        self.database = database
        self.store = store
        self.days = days
        self.deleted = deleted
        self.interval_s = interval_s

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                logger.exception("photo retention round failed")
            await asyncio.sleep(self.interval_s)

    async def run_once(self) -> int:
        """Delete every photo past its time; returns how many went."""
        loop = asyncio.get_running_loop()
        deleted = 0
        while True:
            expired = await self.database.run(
                repository.expired_photos, self.days, BATCH
            )
            if not expired:
                break
            keys = sorted({key for _, key in expired})
            await loop.run_in_executor(None, self._delete, keys)
            await self.database.run(
                repository.mark_photos_deleted, [capture for capture, _ in expired]
            )
            deleted += len(expired)
            if self.deleted is not None:
                self.deleted.inc(len(expired))
            if len(expired) < BATCH:
                break
        if deleted:
            logger.info("deleted %d photos older than %g days", deleted, self.days)
        return deleted

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            self.store.delete(key)
