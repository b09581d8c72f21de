"""What happens to an upload: check, store, record (group commit), then
events and dispatch after the ack; triage runs alongside.

:meth:`UploadPipeline.accept` returns only when the photo is fsynced in the
store and its row is committed, which is what makes the ack a promise. The
inserts of concurrent uploads, from one device or many, share one transaction
(a :class:`hub.batching.BatchWriter`), so durability costs one commit per
batch rather than one per photo. Triage starts as soon as the photo has
passed its checks, while it is written and committed, so the verdict is
often ready by the ack; it is announced and recorded only after the ack, and
never delays it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from PIL import Image

from farmeye.db import DatabaseUnavailable
from farmeye.imaging import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from farmeye.protocol import Frame, ProtocolError
from hub import repository
from hub.batching import BatchWriter
from hub.database import Database
from hub.dispatch import Dispatcher
from hub.events import EventBus
from hub.ingest import DeviceRecord, UploadResult
from hub.metrics import HubMetrics
from hub.repository import CaptureDraft, CaptureRow, TriageRow
from hub.store import ImageStore, StoreError, StoreFull
from hub.triage_pool import TriageOutcome, TriagePool

logger = logging.getLogger(__name__)

MAX_FOLLOW_UPS = 64
"""Acked photos waiting for triage and dispatch at most; more delays acks."""

STORE_THREADS = 8
"""Threads writing photos; fsync waits on the disk, not the CPU."""

ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png"}


def probe_image(data: bytes) -> tuple[str, int, int]:
    """Read only the header of a photo: ``(content type, width, height)``.

    Raises ProtocolError ``bad_image`` for anything that is not a JPEG or PNG
    of a sane size, decompression bombs included, without decoding pixels.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bad_image("image is too large to decode safely") from None
    except Exception as exc:  # Pillow raises many types for unreadable data
        raise _bad_image(
            f"payload is not a readable image ({type(exc).__name__})"
        ) from None
    if kind not in ACCEPTED_FORMATS:
        raise _bad_image(f"image format {kind} is not accepted")
    if width * height > MAX_IMAGE_PIXELS:
        raise _bad_image(f"image is {width}x{height}, over {MAX_IMAGE_PIXELS} pixels")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise _bad_image(f"image is {width}x{height}, under {MIN_IMAGE_SIDE} px a side")
    return ACCEPTED_FORMATS[kind], width, height


def _bad_image(reason: str) -> ProtocolError:
    return ProtocolError(
        "bad_image", f"{reason}; send a JPEG or PNG photo", retryable=False
    )


def check_photo(data: bytes, sha256: str) -> str:
    """The content type of a photo that matches its checksum and is sane."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ProtocolError(
            "checksum_mismatch",
            f"payload has sha256 {actual}, header says {sha256}; resend the photo",
        )
    content_type, _, _ = probe_image(data)
    return content_type


def store_photo(store: ImageStore, data: bytes) -> str:
    """Durably store one checked photo; returns its storage key."""
    try:
        return store.put(data)
    except StoreFull:  # logged by the store when it starts refusing
        raise ProtocolError(
            "storage_unavailable", "the hub's disk is full; retry later"
        ) from None
    except StoreError as exc:
        logger.error("cannot store a photo: %s", exc)
        raise ProtocolError(
            "storage_unavailable", "the hub cannot write photos now; retry later"
        ) from None


class UploadPipeline:
    """The hub's :class:`hub.ingest.UploadSink`."""

    def __init__(
        self,
        store: ImageStore,
        database: Database,
        triage: TriagePool,
        dispatcher: Dispatcher,
        bus: EventBus,
        metrics: HubMetrics,
    ) -> None:
        self.store = store
        self.database = database
        self.triage = triage
        self.dispatcher = dispatcher
        self.bus = bus
        self.metrics = metrics
        self._commits = BatchWriter(
            database, repository.insert_captures, metrics.commit_batch
        )
        self._triage_rows = BatchWriter(database, repository.save_triages)
        self._executor = ThreadPoolExecutor(
            STORE_THREADS, thread_name_prefix="hub-store"
        )
        self._follow_ups: set[asyncio.Task[None]] = set()
        self._follow_up_slots = asyncio.Semaphore(MAX_FOLLOW_UPS)

    async def accept(
        self, device: DeviceRecord, frame: Frame, received_s: float
    ) -> UploadResult:
        header, data = frame.header, frame.payload
        loop = asyncio.get_running_loop()
        content_type = await loop.run_in_executor(
            self._executor, check_photo, data, header["sha256"]
        )
        verdict = asyncio.ensure_future(self.triage.classify(data))
        verdict.add_done_callback(partial(self._triaged, received_s))
        try:
            result = await self._record(device, header, data, content_type, verdict)
        except BaseException:
            verdict.cancel()
            raise
        if result.duplicate:
            verdict.cancel()  # triaged when it first came
        return result

    def _triaged(self, received_s: float, verdict: asyncio.Future[Any]) -> None:
        if not verdict.cancelled():
            self.metrics.triage_seconds.observe(time.perf_counter() - received_s)

    async def _record(
        self,
        device: DeviceRecord,
        header: dict[str, Any],
        data: bytes,
        content_type: str,
        verdict: asyncio.Future[TriageOutcome],
    ) -> UploadResult:
        """Store and commit the photo; hand the verdict to the follow-up."""
        loop = asyncio.get_running_loop()
        key = await loop.run_in_executor(self._executor, store_photo, self.store, data)
        draft = CaptureDraft(
            device.device_id,
            int(device.coop_id),
            int(device.farm_id),
            header["sha256"],
            len(data),
            content_type,
            header["captured_at"],
            key,
        )
        try:
            row = await self._commits.submit(draft)
        except DatabaseUnavailable as exc:
            logger.warning("cannot record upload of %s: %s", device.device_id, exc)
            raise ProtocolError(
                "storage_unavailable", "the hub's database is unavailable; retry later"
            ) from None
        self.metrics.uploads.labels("duplicate" if row.duplicate else "new").inc()
        if not row.duplicate:
            self.metrics.upload_bytes.inc(len(data))
            # Wait for room before acking: when triage falls behind, acks slow
            # down and photos wait in the cameras' spools, not in our memory.
            await self._follow_up_slots.acquire()
            self._follow_up(device, row, data, verdict)
        return UploadResult(row.capture_id, row.duplicate)

    def _follow_up(
        self,
        device: DeviceRecord,
        row: CaptureRow,
        data: bytes,
        verdict: asyncio.Future[TriageOutcome],
    ) -> None:
        task = asyncio.create_task(
            self.after_ack(device, row, data, verdict), name="after-ack"
        )
        self._follow_ups.add(task)
        task.add_done_callback(self._follow_ups.discard)
        task.add_done_callback(lambda _: self._follow_up_slots.release())

    async def after_ack(
        self,
        device: DeviceRecord,
        row: CaptureRow,
        data: bytes,
        verdict: asyncio.Future[TriageOutcome],
    ) -> None:
        """Announce the capture and, once triage is done, the verdict; dispatch."""
        ids: dict[str, Any] = {
            "farm_id": device.farm_id,
            "coop_id": device.coop_id,
            "device_id": device.device_id,
            "capture_id": row.capture_id,
        }
        try:
            await self.bus.emit(
                "capture", **ids, captured_at=row.captured_at.isoformat()
            )
            outcome = await verdict
            await self._record_triage(ids, outcome)
            await self.dispatcher.dispatch(row.capture_id, data, outcome.label)
        except Exception:
            # The capture is safe and pending: re-dispatch picks it up later.
            logger.exception("follow-up of capture %s failed", row.capture_id)

    async def _record_triage(self, ids: dict[str, Any], outcome: TriageOutcome) -> None:
        if not outcome.ok or outcome.label is None:
            logger.warning(
                "capture %s has no triage verdict: %s", ids["capture_id"], outcome.error
            )
            await self.bus.emit("triage", **ids, error=outcome.error)
            return
        event = self.bus.emit(
            "triage",
            **ids,
            label=outcome.label,
            scores=outcome.scores,
            model_version=outcome.model_version,
            latency_ms=outcome.latency_ms,
        )
        save = self._triage_rows.submit(
            TriageRow(
                ids["capture_id"],
                outcome.label,
                outcome.scores,
                outcome.model_version,
                outcome.latency_ms,
            )
        )
        await asyncio.gather(event, save)

    async def close(self, grace_s: float = 5.0) -> None:
        """Let follow-ups in progress finish, then stop the writers."""
        if self._follow_ups:
            await asyncio.wait(list(self._follow_ups), timeout=grace_s)
        for task in list(self._follow_ups):
            task.cancel()
        self._commits.close()
        self._triage_rows.close()
        self._executor.shutdown(wait=True)
