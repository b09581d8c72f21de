"""Hand-off of the full analysis to the Celery workers.

Tasks are sent by name (:data:`farmeye.tasks.ANALYSE_TASK`), so the hub never
imports TensorFlow or the worker code. The photo goes into Redis beside its
task (:func:`farmeye.tasks.stash_photo`), so a worker on another machine
needs no shared disk. A capture leaves the
``pending`` state only once its task is in the queue. When Redis is down or
the queue holds more than ``queue_bound`` tasks, the capture stays pending and
:meth:`Dispatcher.redispatch_forever` sends it later from the image store:
nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import redis
from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from farmeye.labels import HEALTHY
from farmeye.tasks import (
    ANALYSE_TASK,
    ANALYSIS_QUEUE,
    PRIORITY_ROUTINE,
    PRIORITY_SUSPICIOUS,
    analyse_arguments,
    celery_settings,
    stash_photo,
)
from hub import repository
from hub.batching import BatchWriter
from hub.database import Database
from hub.metrics import HubMetrics
from hub.store import ImageStore

logger = logging.getLogger(__name__)

QUEUE_LENGTH_TTL_S = 1.0
"""How long a measured queue length is trusted before measuring again."""

REDIS_TIMEOUT_S = 3.0
"""Seconds a send may wait on Redis before the capture is kept pending."""

PENDING_GRACE_S = 15.0
"""Pending captures younger than this are left to their live dispatch."""

PENDING_BATCH = 100
"""Pending captures sent per round of the re-dispatch loop."""

CLAIM_LEASE_S = 120.0
"""How long a hub's claim on the pending captures it is sending holds."""

_SEND_ERRORS = (KombuError, RedisError, OSError)


class QueueFull(Exception):
    """The analysis queue is over its bound."""


def build_celery_app(redis_url: str) -> Celery:
    """A Celery app that can send analysis tasks; no task code is imported."""
    settings = celery_settings(redis_url)
    transport = dict(settings["broker_transport_options"])
    # body_encoding None: the JSON body goes into Redis as is; consumers
    # read either form.
    transport.update(
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        body_encoding=None,
    )
    settings["broker_transport_options"] = transport
    settings["broker_connection_timeout"] = REDIS_TIMEOUT_S
    app = Celery("farmeye-hub", set_as_current=False)
    app.conf.update(settings)
    return app


def queue_keys() -> list[str]:
    """The Redis lists behind the analysis queue, one per priority step."""
    steps = celery_settings("redis://")["broker_transport_options"]["priority_steps"]
    return [ANALYSIS_QUEUE] + [f"{ANALYSIS_QUEUE}:{step}" for step in steps if step]


class Dispatcher:
    """Sends analysis tasks off the event loop and retries pending captures."""

    def __init__(
        self,
        redis_url: str,
        database: Database,
        store: ImageStore,
        metrics: HubMetrics,
        queue_bound: int,
        interval_s: float = 5.0,
        grace_s: float = PENDING_GRACE_S,
    ) -> None:
        self.database = database
        self.store = store
        self.metrics = metrics
        self.queue_bound = queue_bound
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.app = build_celery_app(redis_url)
        self._redis = redis.Redis.from_url(
            redis_url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        # One thread: the Celery producer is used from one thread only.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="hub-dispatch")
        self._queued = BatchWriter(database, repository.mark_queued)
        self._queue_length = (0, 0.0)
        self._outage_logged = False

    async def dispatch(
        self, capture_id: int, data: bytes, triage_label: str | None
    ) -> bool:
        """Queue the analysis of a capture; False if it was left pending."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._executor, self._send, capture_id, data, triage_label
            )
        except QueueFull:
            self.metrics.dispatch_deferred.labels("queue_full").inc()
            return False
        except _SEND_ERRORS as exc:
            self.metrics.dispatch_deferred.labels("redis_down").inc()
            if not self._outage_logged:
                logger.warning(
                    "cannot queue analyses (%s); captures stay pending "
                    "and are sent when Redis answers",
                    exc,
                )
                self._outage_logged = True
            return False
        self._outage_logged = False
        await self._queued.submit(capture_id)
        return True

    def _send(self, capture_id: int, data: bytes, triage_label: str | None) -> None:
        if self._measured_queue_length() >= self.queue_bound:
            raise QueueFull
        suspicious = triage_label is not None and triage_label != HEALTHY
        key = stash_photo(self._redis, capture_id, data)
        self.app.send_task(
            ANALYSE_TASK,
            kwargs=analyse_arguments(capture_id, triage_label, image_key=key),
            priority=PRIORITY_SUSPICIOUS if suspicious else PRIORITY_ROUTINE,
            retry=False,
        )

    def _measured_queue_length(self) -> int:
        length, measured_s = self._queue_length
        now_s = time.monotonic()
        if now_s - measured_s < QUEUE_LENGTH_TTL_S:
            return length
        with self._redis.pipeline(transaction=False) as pipe:
            for key in queue_keys():
                pipe.llen(key)
            length = sum(int(n) for n in pipe.execute())
        self._queue_length = (length, now_s)
        return length

    async def redispatch_forever(self) -> None:
        """Every ``interval_s``, send captures left pending, oldest first."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                sent = await self.redispatch_once()
            except Exception:
                logger.exception("re-dispatch round failed")
                continue
            if sent:
                logger.info("queued %d pending captures", sent)
                self.metrics.dispatched.labels("redispatch").inc(sent)

    async def redispatch_once(self) -> int:
        """Claim and send one batch of pending captures; stop at the first
        refusal and give the rest back."""
        pending = await self.database.run(
            repository.claim_pending_captures,
            self.grace_s,
            PENDING_BATCH,
            CLAIM_LEASE_S,
        )
        loop = asyncio.get_running_loop()
        sent = 0
        for index, capture in enumerate(pending):
            try:
                data = await loop.run_in_executor(
                    None, self.store.get, capture.storage_key
                )
            except FileNotFoundError:
                logger.error(
                    "photo of capture %s is missing from the store (%s); "
                    "it cannot be analysed",
                    capture.capture_id,
                    capture.storage_key,
                )
                await self.database.run(
                    repository.mark_dispatch_failed, capture.capture_id
                )
                continue
            if not await self.dispatch(capture.capture_id, data, capture.triage_label):
                unsent = [c.capture_id for c in pending[index:]]
                await self.database.run(repository.release_claims, unsent)
                break
            sent += 1
        return sent

    async def close(self) -> None:
        self._queued.close()
        await asyncio.get_running_loop().run_in_executor(None, self._close_clients)

    def _close_clients(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._redis.close()
        self.app.close()
