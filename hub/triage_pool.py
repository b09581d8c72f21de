"""Triage in a pool of processes, so decoding and inference never block the
event loop and use every core.

Each process loads the shipped int8 model once (LiteRT, one thread). Photos
cross the process boundary as their encoded bytes, which are far smaller than
decoded pixel arrays; results come back as a small :class:`TriageOutcome`.
A photo that cannot be decoded, a decompression bomb included, yields an
outcome with ``error`` set and leaves the process running.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from farmeye.imaging import ImageError
from farmeye.triage import TriageModel

logger = logging.getLogger(__name__)

_model: TriageModel | None = None
"""The model of this pool process, loaded by :func:`_load_model`."""


@dataclass(frozen=True)
class TriageOutcome:
    """The verdict of one photo, or why there is none."""

    label: str | None
    scores: dict[str, float] = field(default_factory=dict)
    model_version: str = ""
    latency_ms: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _load_model() -> None:
    global _model
    _model = TriageModel.shipped(threads=1)


def classify_bytes(data: bytes) -> TriageOutcome:
    """Run in a pool process: decode ``data`` and give its triage verdict."""
    assert _model is not None, "pool process started without its model"  # noqa: S101
    start_s = time.perf_counter()
    try:
        label, scores = _model.classify(data)
    except ImageError as exc:
        return TriageOutcome(
            label=None,
            model_version=_model.version,
            latency_ms=_elapsed_ms(start_s),
            error=str(exc),
        )
    return TriageOutcome(
        label=label,
        scores=scores,
        model_version=_model.version,
        latency_ms=_elapsed_ms(start_s),
    )


def _pause(seconds: float) -> None:
    """Keep a pool process busy briefly, so that warm-up starts them all."""
    time.sleep(seconds)


def _elapsed_ms(start_s: float) -> float:
    return round((time.perf_counter() - start_s) * 1000.0, 3)


class TriagePool:
    """A process pool running :func:`classify_bytes`; awaitable from asyncio."""

    def __init__(self, processes: int | None = None) -> None:
        self.processes = processes or os.cpu_count() or 1
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn, not fork: the hub has threads (database, store) by now.
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load_model,
        )

    async def warm_up(self) -> None:
        """Start every process and load its model before the first photo."""
        loop = asyncio.get_running_loop()
        futures = [
            loop.run_in_executor(self._executor, _pause, 0.2)
            for _ in range(self.processes)
        ]
        await asyncio.gather(*futures)

    async def classify(self, data: bytes) -> TriageOutcome:
        """The triage verdict of photo ``data``; never raises for bad photos."""
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            return await loop.run_in_executor(executor, classify_bytes, data)
        except BrokenProcessPool:
            # A process died (out of memory, a crash in native code): replace
            # the pool once so later photos are served, and report this one.
            if executor is self._executor:
                logger.exception("triage process died; restarting the pool")
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
            return TriageOutcome(label=None, error="triage process died")

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
