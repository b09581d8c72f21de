"""TCP ingest: the cameras' long-lived connections.

Each connection is one coroutine (no thread), so thousands of idle cameras
cost only their sockets. A connection first authenticates (hello, challenge,
auth, auth_ok) within ``handshake_timeout_s``; then it may pipeline uploads,
send health reports and pings, and receive commands. Frames are decoded by
the sans-I/O :class:`farmeye.protocol.FrameDecoder`.

A frame that breaks the protocol gets an ``error`` frame naming the problem,
one WARNING line with the peer and the reason, and the connection is closed;
a refused upload (bad checksum, not an image) gets an ``error`` frame for that
upload and the connection stays open. Other connections never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from farmeye import protocol
from farmeye.auth import DEFAULT_ITERATIONS, check_proof, new_nonce
from farmeye.protocol import Frame, ProtocolError
from hub.metrics import HubMetrics

logger = logging.getLogger(__name__)

READ_CHUNK_BYTES = 256 * 1024
"""Bytes read from a socket at a time."""

MAX_UPLOADS_IN_FLIGHT = 32
"""Uploads of one connection being stored at once; more waits (backpressure)."""

DRAIN_TIMEOUT_S = 30.0
"""Time a peer has to take an ack or error off our send buffer."""

_UNKNOWN_SALT_KEY = secrets.token_bytes(16)


@dataclass(frozen=True)
class DeviceRecord:
    """What the hub knows about a device when it connects."""

    device_id: str
    farm_id: int | str
    coop_id: int | str
    salt: str
    verifier: bytes
    iterations: int
    revoked: bool
    schedule: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class UploadResult:
    capture_id: int
    duplicate: bool


class DeviceDirectory(Protocol):
    """Device records and presence; backed by PostgreSQL in the hub."""

    async def find(self, device_id: str) -> DeviceRecord | None: ...

    async def connected(self, device: DeviceRecord) -> None: ...

    async def disconnected(self, device: DeviceRecord) -> None: ...

    async def heard_from(
        self, device: DeviceRecord, health: Mapping[str, Any] | None
    ) -> None: ...


class UploadSink(Protocol):
    """Makes an upload durable; raises ProtocolError to refuse it."""

    async def accept(
        self, device: DeviceRecord, frame: Frame, received_s: float
    ) -> UploadResult: ...


@dataclass(frozen=True)
class IngestLimits:
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0
    max_payload_bytes: int = protocol.DEFAULT_MAX_PAYLOAD_BYTES


class IdleTimeout(Exception):
    """The peer sent nothing for too long."""


class FrameLink:
    """Frames over one stream pair: read with a timeout, write whole frames."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_payload_bytes: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = _peer_name(writer)
        self._decoder = protocol.FrameDecoder(max_payload_bytes)
        self._inbox: list[Frame] = []

    async def read(self, timeout_s: float) -> Frame | None:
        """The next frame; None on a clean close; IdleTimeout when silent."""
        while not self._inbox:
            try:
                data = await asyncio.wait_for(
                    self.reader.read(READ_CHUNK_BYTES), timeout_s
                )
            except TimeoutError:
                raise IdleTimeout(f"nothing received for {timeout_s:g} s") from None
            if not data:
                self._decoder.eof()
                return None
            self._inbox.extend(self._decoder.feed(data))
        return self._inbox.pop(0)

    async def send(self, header: Mapping[str, Any], *, validate: bool = True) -> None:
        """Write one frame; ``validate=False`` for headers built from checked
        values only (acks, pongs), which are most of what the hub sends."""
        if self.writer.is_closing():
            return
        self.writer.write(protocol.encode(header, validate=validate))
        await asyncio.wait_for(self.writer.drain(), DRAIN_TIMEOUT_S)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


class DeviceSession:
    """An authenticated device link; commands to the device go through it."""

    def __init__(self, link: FrameLink, device: DeviceRecord) -> None:
        self.link = link
        self.device = device
        self._command_ids = itertools.count(1)

    async def send_command(self, name: str, args: Mapping[str, Any]) -> int:
        command_id = next(self._command_ids)
        await self.link.send(protocol.command(command_id, name, **args))
        return command_id


class IngestServer:
    """The asyncio TCP server for devices."""

    def __init__(
        self,
        devices: DeviceDirectory,
        uploads: UploadSink,
        metrics: HubMetrics,
        limits: IngestLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.devices = devices
        self.uploads = uploads
        self.metrics = metrics
        self.limits = limits
        self.ssl_context = ssl_context
        self.sessions: dict[str, DeviceSession] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> asyncio.Server:
        self._server = await asyncio.start_server(
            self._serve, host, port, ssl=self.ssl_context, backlog=4096
        )
        return self._server

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let uploads in progress finish, close every link."""
        if self._server is not None:
            self._server.close()
        uploads = [t for t in self._tasks if t.get_name().startswith("upload")]
        if uploads:
            await asyncio.wait(uploads, timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def send_command(
        self, device_id: str, name: str, args: Mapping[str, Any]
    ) -> int:
        """Send a command to a connected device; KeyError when not connected."""
        return await self.sessions[device_id].send_command(name, args)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101
        self._track(task)
        link = FrameLink(reader, writer, self.limits.max_payload_bytes)
        self.metrics.connections.inc()
        try:
            await self._converse(link)
        finally:
            self.metrics.connections.dec()
            await link.close()

    async def _converse(self, link: FrameLink) -> None:
        """Handshake then session; every way a connection can end, logged once."""
        try:
            device = await asyncio.wait_for(
                self._handshake(link), self.limits.handshake_timeout_s
            )
        except TimeoutError:
            await self._refuse(link, "handshake_timeout", _handshake_late(self))
            return
        except (ProtocolError, IdleTimeout, OSError) as exc:
            await self._end_on(link, exc, device=None)
            return
        if device is None:
            return
        await self._run_session(link, device)

    async def _handshake(self, link: FrameLink) -> DeviceRecord | None:
        hello = await link.read(self.limits.handshake_timeout_s)
        if hello is None:
            logger.info("peer %s closed before hello", link.peer)
            return None
        _expect(hello, "hello")
        device_id = hello.header["device_id"]
        device = await self.devices.find(device_id)
        nonce = new_nonce()
        salt, iterations = _challenge_parameters(device, device_id)
        await link.send(protocol.challenge(nonce, salt, iterations))

        answer = await link.read(self.limits.handshake_timeout_s)
        if answer is None:
            logger.info("peer %s closed before auth", link.peer)
            return None
        _expect(answer, "auth")
        if (
            device is None
            or device.revoked
            or answer.header["device_id"] != device_id
            or not check_proof(device.verifier, nonce, answer.header["proof"])
        ):
            await self._refuse(link, "auth_failed", _auth_failed(device_id))
            return None
        wants_time = protocol.HUB_TIME in hello.header.get("features", ())
        await link.send(
            protocol.auth_ok(
                device_id,
                device.coop_id,
                device.farm_id,
                device.schedule,
                hub_time=datetime.now(UTC) if wants_time else None,
            )
        )
        return device

    async def _refuse(self, link: FrameLink, code: str, message: str) -> None:
        logger.warning("refusing peer %s: %s: %s", link.peer, code, message)
        self.metrics.frame_errors.labels(code).inc()
        retryable = protocol.ERROR_CODES.get(code, True)
        with contextlib.suppress(OSError, TimeoutError):
            await link.send(protocol.error(code, message, retryable))

    async def _end_on(
        self, link: FrameLink, exc: BaseException, device: DeviceRecord | None
    ) -> None:
        """Close a connection after a protocol error, silence or a socket error."""
        who = f"{link.peer} ({device.device_id})" if device else link.peer
        if isinstance(exc, ProtocolError):
            await self._refuse(link, exc.code, str(exc))
        elif isinstance(exc, IdleTimeout) and device is None:
            await self._refuse(link, "handshake_timeout", str(exc))
        elif isinstance(exc, IdleTimeout):
            logger.info("closing idle link of %s: %s", who, exc)
            with contextlib.suppress(OSError, TimeoutError):
                await link.send(protocol.error("idle_timeout", str(exc), True))
        else:
            logger.info("link of %s lost: %s", who, exc)

    async def _run_session(self, link: FrameLink, device: DeviceRecord) -> None:
        session = DeviceSession(link, device)
        previous = self.sessions.get(device.device_id)
        self.sessions[device.device_id] = session
        if previous is not None:
            logger.info("device %s reconnected; closing its old link", device.device_id)
            await previous.link.close()
        self.metrics.devices_connected.inc()
        await self.devices.connected(device)
        logger.info("device %s connected from %s", device.device_id, link.peer)
        try:
            await self._receive_frames(session)
        except (ProtocolError, IdleTimeout, OSError, TimeoutError) as exc:
            await self._end_on(link, exc, device)
        else:
            logger.info("device %s disconnected", device.device_id)
        finally:
            self.metrics.devices_connected.dec()
            if self.sessions.get(device.device_id) is session:
                del self.sessions[device.device_id]
                await self.devices.disconnected(device)

    async def _receive_frames(self, session: DeviceSession) -> None:
        link, device = session.link, session.device
        in_flight = asyncio.Semaphore(MAX_UPLOADS_IN_FLIGHT)
        while (frame := await link.read(self.limits.idle_timeout_s)) is not None:
            if frame.type == "upload":
                await in_flight.acquire()
                task = asyncio.create_task(
                    self._upload(link, device, frame, time.perf_counter()),
                    name=f"upload-{device.device_id}-{frame.header['id']}",
                )
                task.add_done_callback(lambda _: in_flight.release())
                self._track(task)
            elif frame.type == "ping":
                await link.send(protocol.pong(frame.header["id"]), validate=False)
                await self.devices.heard_from(device, None)
            elif frame.type == "health":
                await self.devices.heard_from(device, frame.header)
            elif frame.type == "error":
                logger.info("device %s reports: %s", device.device_id, frame.header)
            elif frame.type != "pong":
                raise ProtocolError(
                    "unexpected_message",
                    f"{frame.type} is not expected after auth_ok; send upload, "
                    "health, ping or pong",
                )

    async def _upload(
        self, link: FrameLink, device: DeviceRecord, frame: Frame, received_s: float
    ) -> None:
        upload_id = frame.header["id"]
        try:
            result = await self.uploads.accept(device, frame, received_s)
        except ProtocolError as exc:
            logger.warning(
                "refusing upload %s of %s from %s: %s: %s",
                upload_id,
                device.device_id,
                link.peer,
                exc.code,
                exc,
            )
            self.metrics.frame_errors.labels(exc.code).inc()
            self.metrics.uploads.labels(exc.code).inc()
            await self._send_quietly(link, exc.to_header(upload_id))
            return
        except Exception:
            logger.exception("upload %s of %s failed", upload_id, device.device_id)
            self.metrics.uploads.labels("internal").inc()
            header = protocol.error(
                "internal", "the hub failed to store this photo; retry", True, upload_id
            )
            await self._send_quietly(link, header)
            return
        ack = protocol.ack(upload_id, result.capture_id, result.duplicate)
        await self._send_quietly(link, ack, validate=False)
        self.metrics.ack_seconds.observe(time.perf_counter() - received_s)

    async def _send_quietly(
        self, link: FrameLink, header: Mapping[str, Any], *, validate: bool = True
    ) -> None:
        """Send, accepting that the peer may be gone: it will retry from its spool."""
        with contextlib.suppress(OSError, TimeoutError):
            await link.send(header, validate=validate)


def _expect(frame: Frame, kind: str) -> None:
    if frame.type == kind:
        return
    code = "auth_required" if kind == "hello" else "unexpected_message"
    raise ProtocolError(
        code,
        f"expected {kind}, got {frame.type}; a connection starts with hello, "
        "then auth answering the challenge",
    )


def _challenge_parameters(
    device: DeviceRecord | None, device_id: str
) -> tuple[str, int]:
    """Salt and iterations to challenge with; stable fakes for unknown devices.

    An unknown device gets a made-up salt that stays the same while the hub
    runs, so a stranger cannot tell unknown ids from known ones by the
    challenge.
    """
    if device is not None:
        return device.salt, device.iterations
    fake = hmac.new(_UNKNOWN_SALT_KEY, device_id.encode(), hashlib.sha256)
    return fake.hexdigest()[:32], DEFAULT_ITERATIONS


def _auth_failed(device_id: str) -> str:
    return (
        f"device {device_id} is unknown, revoked, or its secret is wrong; "
        "check the agent's device id and secret or register it with "
        "`farmeye devices add`"
    )


def _handshake_late(server: IngestServer) -> str:
    return (
        f"handshake not finished within {server.limits.handshake_timeout_s:g} s; "
        "send hello then auth promptly"
    )


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
