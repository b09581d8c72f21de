"""The dynamic batcher on its own: no model, no queue."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from tests.workers.support import wait_until
from workers.batching import Batcher, BatcherStopped


class Recorder:
    """A handler that remembers its batches and can be held back."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.gate.wait(10)
        self.batches.append(list(items))
        return [item * 10 for item in items]


def test_full_batches_form_when_items_wait():
    """Items queued while the handler is busy are handled max_batch at a time."""
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=3, max_wait_s=30.0, name="test").start()
    futures = [batcher.submit(i) for i in range(6)]
    assert [f.result(10) for f in futures] == [0, 10, 20, 30, 40, 50]
    batcher.stop(5)
    assert recorder.batches == [[0, 1, 2], [3, 4, 5]]


def test_partial_batch_goes_after_the_wait():
    """A lone item is handled once the oldest item has waited max_wait_s."""
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=8, max_wait_s=0.05, name="test").start()
    assert batcher.submit(7).result(10) == 70
    batcher.stop(5)
    assert recorder.batches == [[7]]


def test_lower_priority_number_goes_first():
    """Among waiting items, priority 0 (suspicious) is batched before 5."""
    recorder = Recorder()
    recorder.gate.clear()
    batcher = Batcher(recorder, max_batch=2, max_wait_s=0.0, name="test").start()
    first = batcher.submit(100, priority=5)
    wait_until(lambda: batcher.pending() == 0, what="item 100 to reach the gate")
    routine = [batcher.submit(i, priority=5) for i in (1, 2)]
    suspicious = [batcher.submit(i, priority=0) for i in (3, 4)]
    recorder.gate.set()
    for future in [first, *routine, *suspicious]:
        future.result(10)
    batcher.stop(5)
    assert recorder.batches == [[100], [3, 4], [1, 2]]


def test_handler_error_reaches_every_caller():
    """An exception from the handler fails every future of that batch."""

    def broken(items: Sequence[int]) -> list[int | BaseException]:
        raise RuntimeError("device lost")

    batcher = Batcher(broken, max_batch=2, max_wait_s=30.0, name="test").start()
    futures = [batcher.submit(i) for i in range(2)]
    for future in futures:
        with pytest.raises(RuntimeError, match="device lost"):
            future.result(10)
    batcher.stop(5)


def test_per_item_exception_fails_only_that_item():
    """A handler may return an exception for one item and results for others."""

    def picky(items: Sequence[int]) -> list[int | BaseException]:
        return [ValueError("odd") if item % 2 else item for item in items]

    batcher = Batcher(picky, max_batch=2, max_wait_s=30.0, name="test").start()
    even, odd = batcher.submit(2), batcher.submit(3)
    assert even.result(10) == 2
    with pytest.raises(ValueError, match="odd"):
        odd.result(10)
    batcher.stop(5)


def test_stop_handles_what_is_queued_then_refuses():
    """stop() drains queued items; later submissions are refused."""
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=4, max_wait_s=30.0, name="test").start()
    futures = [batcher.submit(i) for i in range(3)]
    batcher.stop(5)
    assert [f.result(0) for f in futures] == [0, 10, 20]
    with pytest.raises(BatcherStopped):
        batcher.submit(9)


def test_handler_returning_wrong_count_is_an_error():
    """A handler bug (results missing) fails the batch instead of hanging it."""

    def forgetful(items: Sequence[int]) -> list[int | BaseException]:
        return []

    batcher = Batcher(forgetful, max_batch=1, max_wait_s=0, name="test").start()
    with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
        batcher.submit(1).result(10)
    batcher.stop(5)


def test_announced_items_keep_the_batch_open_until_full():
    """While enough announced items are on their way, the batch waits for them."""
    recorder = Recorder()
    batcher = Batcher(
        recorder, max_batch=3, max_wait_s=0.01, max_hold_s=60.0, name="test"
    ).start()
    batcher.expect()
    batcher.expect()
    first = batcher.submit(1)
    threading.Event().wait(0.2)  # well past max_wait_s: a lone item would go
    rest = [batcher.submit(i, expected=True) for i in (2, 3)]
    for future in [first, *rest]:
        future.result(10)
    batcher.stop(5)
    assert recorder.batches == [[1, 2, 3]]


def test_withdrawn_announcement_lets_the_batch_go():
    """An announced item that will not come stops holding the batch back."""
    recorder = Recorder()
    batcher = Batcher(
        recorder, max_batch=3, max_wait_s=0.01, max_hold_s=600.0, name="test"
    ).start()
    batcher.expect()
    batcher.expect()
    future = batcher.submit(1)
    batcher.withdraw()
    assert future.result(30) == 10
    batcher.withdraw()
    batcher.stop(5)
    assert recorder.batches == [[1]]
