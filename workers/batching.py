"""Dynamic batching: many callers, one handler thread, one call per batch.

Task threads :meth:`Batcher.submit` one item each and wait on the returned
future. A single thread collects items into a batch until it holds
``max_batch`` of them or the oldest has waited ``max_wait_s``, then calls the
handler once for the whole batch and resolves every future. Items of a lower
priority number are taken first, so suspicious captures jump the line here as
they do in Redis.

Callers may announce an item before it is ready (:meth:`Batcher.expect`,
e.g. while its photo is decoded). When the items waiting plus those
announced would fill a batch, the batch waits up to ``max_hold_s`` instead
of ``max_wait_s``: under load, batches stay full (the model costs far less
per image in a full batch), while a lone photo still goes after
``max_wait_s``.

Nothing here knows about models or Celery; :mod:`workers.engine` chains two
batchers (the model, then the database).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

Handler = Callable[[Sequence[ItemT]], Sequence[ResultT | BaseException]]
"""Takes a batch, returns one result (or exception) per item, in order."""


class BatcherStopped(RuntimeError):
    """An item was submitted after :meth:`Batcher.stop`."""


@dataclass(order=True)
class _Entry(Generic[ItemT, ResultT]):
    priority: int
    sequence: int
    enqueued_s: float = field(compare=False)
    item: ItemT = field(compare=False)
    future: Future[ResultT] = field(compare=False)


class Batcher(Generic[ItemT, ResultT]):
    """Groups submitted items into batches for one handler thread."""

    def __init__(
        self,
        handler: Handler[ItemT, ResultT],
        *,
        max_batch: int,
        max_wait_s: float,
        name: str,
        max_hold_s: float | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._handler = handler
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_hold_s = max(self.max_wait_s, max_hold_s or 0.0)
        self.name = name
        self._expected = 0
        self._heap: list[_Entry[ItemT, ResultT]] = []
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Batcher[ItemT, ResultT]:
        self._thread.start()
        return self

    def expect(self) -> None:
        """Announce an item that will be submitted soon (or withdrawn)."""
        with self._condition:
            self._expected += 1

    def withdraw(self) -> None:
        """An announced item will not come after all."""
        with self._condition:
            self._expected = max(0, self._expected - 1)
            self._condition.notify()

    def submit(
        self, item: ItemT, priority: int = 0, *, expected: bool = False
    ) -> Future[ResultT]:
        """Queue ``item``; the future resolves when its batch is handled.

        ``expected`` says the item was announced with :meth:`expect`.
        """
        future: Future[ResultT] = Future()
        with self._condition:
            if expected:
                self._expected = max(0, self._expected - 1)
            if self._stopping:
                raise BatcherStopped(f"{self.name} is stopped")
            entry = _Entry(
                priority, next(self._sequence), time.monotonic(), item, future
            )
            heapq.heappush(self._heap, entry)
            self._condition.notify()
        return future

    def pending(self) -> int:
        """Items waiting for a batch."""
        with self._condition:
            return len(self._heap)

    def stop(self, timeout_s: float | None = None) -> None:
        """Handle what is queued, then end the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            self._handle(batch)

    def _next_batch(self) -> list[_Entry[ItemT, ResultT]]:
        """Wait for a full batch or the oldest item's deadline; [] when stopped."""
        with self._condition:
            while not self._heap and not self._stopping:
                self._condition.wait()
            if self._heap:
                oldest_s = min(entry.enqueued_s for entry in self._heap)
                while len(self._heap) < self.max_batch and not self._stopping:
                    left_s = oldest_s + self._wait_s() - time.monotonic()
                    if left_s <= 0:
                        break
                    self._condition.wait(left_s)
            batch = [
                heapq.heappop(self._heap)
                for _ in range(min(self.max_batch, len(self._heap)))
            ]
            logger.debug(
                "%s: batch of %d, %d left waiting, %d announced",
                self.name,
                len(batch),
                len(self._heap),
                self._expected,
            )
            return batch

    def _wait_s(self) -> float:
        """How long the oldest item may wait, given what is on its way."""
        if len(self._heap) + self._expected >= self.max_batch:
            return self.max_hold_s
        return self.max_wait_s

    def _handle(self, batch: list[_Entry[ItemT, ResultT]]) -> None:
        try:
            results = self._handler([entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"{self.name} handler returned {len(results)} results "
                    f"for {len(batch)} items"
                )
        except BaseException as exc:  # every waiting caller must hear of it
            for entry in batch:
                entry.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)
