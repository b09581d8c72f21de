"""An asyncio client of the hub's TCP ingest: what a camera speaks.

Used by ``farmeye upload``, the demo camera of ``farmeye up --demo`` and the
edge agent. It needs only the standard library and :mod:`farmeye.protocol`,
so it runs on a Pi Zero. One :class:`DeviceClient` is one authenticated
connection; uploads may be pipelined (many in flight, acks matched by id).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import itertools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from farmeye import __version__, protocol
from farmeye.auth import DeviceCredentials

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7700
"""Ingest port of a hub when an address names none."""

READ_CHUNK_BYTES = 256 * 1024

CommandHandler = Callable[[dict[str, Any]], Awaitable[None] | None]


class HubError(Exception):
    """The hub answered with an ``error`` frame."""

    def __init__(self, code: str, message: str, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> HubError:
        return cls(header["code"], header["message"], bool(header["retryable"]))


class LinkClosed(ConnectionError):
    """The connection to the hub ended; unacknowledged uploads must be resent."""


@dataclass(frozen=True)
class Welcome:
    """What the hub said on accepting the device (``auth_ok``)."""

    device_id: str
    coop_id: int | str
    farm_id: int | str
    schedule: dict[str, Any] | None = None
    hub_time: datetime | None = None
    """The hub's clock when auth_ok arrived, if the client asked for it
    (``sync_clock``): the ``hub_time`` it carried plus half the round trip of
    the auth exchange."""

    @property
    def clock_offset_s(self) -> float | None:
        """The hub's clock minus this machine's, as of now."""
        if self.hub_time is None:
            return None
        return (self.hub_time - datetime.now(UTC)).total_seconds()


@dataclass(frozen=True)
class Ack:
    """The hub holds the photo durably: it may leave the spool."""

    id: int
    capture_id: int
    duplicate: bool


@dataclass
class _Pending:
    futures: dict[int, asyncio.Future[Ack]] = field(default_factory=dict)


def parse_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too); the port may be left out."""
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:
        return address.strip("[]"), default_port
    if not port.isdigit():
        raise ValueError(f"bad hub address {address!r}; expected HOST:PORT")
    return host.strip("[]"), int(port)


def content_type_of(data: bytes) -> str:
    """``image/png`` for PNG bytes, else ``image/jpeg`` (the hub checks)."""
    return "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"


class DeviceClient:
    """One authenticated connection from a device to a hub."""

    def __init__(
        self,
        credentials: DeviceCredentials,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        ssl_context: ssl.SSLContext | None = None,
        agent_version: str = f"farmeye/{__version__}",
        timeout_s: float = 30.0,
        on_command: CommandHandler | None = None,
        sync_clock: bool = False,
    ) -> None:
        self.credentials = credentials
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.agent_version = agent_version
        self.timeout_s = timeout_s
        self.on_command = on_command
        self.sync_clock = sync_clock
        """Ask for the hub's clock (needs a hub that knows ``hub_time``)."""
        self.welcome: Welcome | None = None
        self._ids = itertools.count(1)
        self._pending = _Pending()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = protocol.FrameDecoder()
        self._inbox: list[protocol.Frame] = []
        self._receiver: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def __aenter__(self) -> DeviceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> Welcome:
        """Open the connection and authenticate; raise HubError if refused."""
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.ssl_context),
            self.timeout_s,
        )
        try:
            self.welcome = await asyncio.wait_for(self._handshake(), self.timeout_s)
        except BaseException:
            await self.close()
            raise
        self._receiver = asyncio.create_task(self._receive(), name="device-receive")
        return self.welcome

    async def _handshake(self) -> Welcome:
        device_id = self.credentials.device_id
        features = [protocol.HUB_TIME] if self.sync_clock else []
        await self._send(protocol.hello(device_id, self.agent_version, features))
        challenge = await self._expect("challenge")
        answer = self.credentials.answer(
            challenge["nonce"], challenge["salt"], challenge["iterations"]
        )
        sent_s = time.monotonic()
        await self._send(protocol.auth(device_id, answer))
        accepted = await self._expect("auth_ok")
        hub_time = None
        if "hub_time" in accepted:
            half_trip = timedelta(seconds=(time.monotonic() - sent_s) / 2)
            try:
                hub_time = datetime.fromisoformat(accepted["hub_time"]) + half_trip
            except (ValueError, OverflowError):  # the pattern allows month 13
                logger.warning("ignoring the hub's clock %r", accepted["hub_time"])
        return Welcome(
            device_id=accepted["device_id"],
            coop_id=accepted["coop_id"],
            farm_id=accepted["farm_id"],
            schedule=accepted.get("schedule"),
            hub_time=hub_time,
        )

    async def _expect(self, kind: str) -> dict[str, Any]:
        frame = await self._read_frame()
        if frame is None:
            raise LinkClosed(f"hub closed the connection while {kind} was awaited")
        if frame.type == "error":
            raise HubError.from_header(frame.header)
        if frame.type != kind:
            raise HubError(
                "unexpected_message", f"hub sent {frame.type}, expected {kind}", False
            )
        return frame.header

    async def _read_frame(self) -> protocol.Frame | None:
        assert self._reader is not None  # noqa: S101
        while not self._inbox:
            data = await self._reader.read(READ_CHUNK_BYTES)
            if not data:
                self._decoder.eof()
                return None
            self._inbox.extend(self._decoder.feed(data))
        return self._inbox.pop(0)

    async def _send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        if self._writer is None or self._writer.is_closing():
            raise LinkClosed("not connected to the hub")
        self._writer.write(protocol.encode(header, payload))
        await self._writer.drain()

    async def upload(
        self,
        data: bytes,
        *,
        captured_at: datetime | None = None,
        content_type: str | None = None,
        meta: dict[str, Any] | None = None,
        triage: dict[str, Any] | None = None,
    ) -> Ack:
        """Send one photo and wait for its ack; HubError if the hub refuses it.

        ``triage`` is the device's own verdict (``label``, ``scores``,
        ``model_version``), when it runs the triage model.
        """
        upload_id = next(self._ids)
        header = protocol.upload_header(
            upload_id,
            hashlib.sha256(data).hexdigest(),
            captured_at or datetime.now(UTC),
            content_type or content_type_of(data),
            meta=meta,
            triage=triage,
        )
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._check_open()
        self._pending.futures[upload_id] = future
        try:
            await self._send(header, data)
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        finally:
            self._pending.futures.pop(upload_id, None)

    async def send_health(self, **fields: Any) -> None:
        """Report the device's condition (see ``schemas/health.json``)."""
        await self._send(protocol.health(**fields))

    @property
    def failure(self) -> BaseException | None:
        """Why the connection ended (a HubError when the hub said why), or None."""
        return self._failure

    def _check_open(self) -> None:
        if self._failure is not None:
            raise LinkClosed(f"connection to the hub is gone: {self._failure}")

    async def _receive(self) -> None:
        """Match acks and errors to uploads; answer pings; run commands."""
        try:
            while (frame := await self._read_frame()) is not None:
                await self._on_frame(frame)
            self._fail_all(LinkClosed("hub closed the connection"))
        except (OSError, protocol.ProtocolError, HubError) as exc:
            self._fail_all(exc if isinstance(exc, HubError) else LinkClosed(str(exc)))

    async def _on_frame(self, frame: protocol.Frame) -> None:
        header = frame.header
        if frame.type == "ack":
            ack = Ack(header["id"], header["capture_id"], header["duplicate"])
            self._settle(header["id"], ack)
        elif frame.type == "error" and "id" in header:
            self._settle(header["id"], HubError.from_header(header))
        elif frame.type == "error":
            raise HubError.from_header(header)
        elif frame.type == "ping":
            await self._send(protocol.pong(header["id"]))
        elif frame.type == "command" and self.on_command is not None:
            outcome = self.on_command(header)
            if inspect.isawaitable(outcome):
                await outcome

    def _settle(self, upload_id: int, outcome: Ack | HubError) -> None:
        future = self._pending.futures.get(upload_id)
        if future is None or future.done():
            return
        if isinstance(outcome, HubError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def _fail_all(self, exc: BaseException) -> None:
        self._failure = exc
        for future in self._pending.futures.values():
            if not future.done():
                future.set_exception(exc)

    async def wait_closed(self) -> None:
        """Return when the hub ends the connection (or it fails)."""
        if self._receiver is not None:
            await asyncio.shield(self._receiver)

    async def close(self) -> None:
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiver
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._fail_all(LinkClosed("connection closed by this device"))
