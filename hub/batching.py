"""Group commit: database writes of concurrent requests share a transaction.

A :class:`BatchWriter` takes items one by one from many coroutines and writes
whatever has queued up in one call of its ``work`` function (one transaction,
one commit). While a batch is being written the next one fills, so under load
batches grow by themselves and at low load an item waits for no one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from prometheus_client import Histogram

from farmeye.db import Connection
from hub.database import Database

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_BATCH = 128
"""Most items written in one transaction."""


class BatchWriter(Generic[Item, Result]):
    """Writes items in batches with ``work(connection, items) -> results``."""

    def __init__(
        self,
        database: Database,
        work: Callable[[Connection, Sequence[Item]], Sequence[Result]],
        sizes: Histogram | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.database = database
        self.work = work
        self.sizes = sizes
        self.max_batch = max_batch
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """Write ``item`` and return its result once the batch is committed."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="batch-writer")
        return await future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = await self.database.run(self.work, items)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if self.sizes is not None:
            self.sizes.observe(len(batch))
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
