"""The WebSocket event stream: every event this hub hears, filtered per client.

Each client is one :class:`StreamClient` that drives the sans-I/O protocol of
``websockets`` on the HTTP connection it arrived on (see :mod:`hub.http` for
why the HTTP side is our own). Per-message compression is never offered, so
an event is framed once per client with no deflate cost. Sending never waits:
a client whose socket buffer grows past ``MAX_BUFFER_BYTES`` is too slow to
keep up and is closed, instead of slowing every other client down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

from websockets.frames import CloseCode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from farmeye.events import encode_event
from hub.http import Request, parse_time

logger = logging.getLogger(__name__)

# The sans-I/O protocol logs each close at INFO, which the lines of this
# module already say; keep its debug detail available on request only.
_protocol_logger = logging.getLogger(f"{__name__}.protocol")
_protocol_logger.setLevel(logging.WARNING)

MAX_BUFFER_BYTES = 4 * 1024 * 1024
"""Unsent bytes a client may fall behind by before it is closed."""

PING_INTERVAL_S = 20.0
"""A ping goes to a client that sent nothing for this long."""

IDLE_TIMEOUT_S = 60.0
"""A client that sent nothing, pongs included, for this long is closed."""

CLOSE_TIMEOUT_S = 5.0
"""Time given to a client to finish the closing handshake."""

MAX_CLIENT_MESSAGE_BYTES = 4096
"""Largest message a client may send; the stream ignores their content."""

REPLAY_MAX_EVENTS = 1000
"""Most past events a client asking with ``since=`` gets (the newest ones)."""

REPLAY_MAX_AGE_S = 24 * 3600.0
"""How far back ``since=`` may reach; older is taken as this far back."""

MAX_HELD_EVENTS = 10_000
"""Live events kept for a client while its replay is read."""


@dataclass(frozen=True)
class Viewer:
    """Who opened a stream or called the API, and what they may see and do.

    ``roles`` maps each farm id (as text) the user belongs to onto the role
    there; ``is_admin`` users (the local operator of ``farmeye up``) see every
    farm.
    """

    user_id: int | None
    name: str
    roles: Mapping[str, str]
    is_admin: bool = False

    def may_see(self, farm_id: Any) -> bool:
        return self.is_admin or str(farm_id) in self.roles

    def may_act(self, farm_id: Any) -> bool:
        """Whether the user may give feedback and send device commands."""
        return self.is_admin or self.roles.get(str(farm_id)) in ("manager", "admin")

    def farm_scope(self) -> list[int] | None:
        """Farm ids to restrict queries to; None means every farm."""
        return None if self.is_admin else sorted(int(f) for f in self.roles)


@dataclass(frozen=True)
class StreamFilter:
    """Which events one client receives."""

    viewer: Viewer
    farm_id: str | None = None
    coop_id: str | None = None
    device_id: str | None = None

    def matches(self, event: Mapping[str, Any]) -> bool:
        farm_id = event.get("farm_id")
        if not self.viewer.may_see(farm_id):
            return False
        if self.farm_id is not None and str(farm_id) != self.farm_id:
            return False
        if self.coop_id is not None and str(event.get("coop_id")) != self.coop_id:
            return False
        return self.device_id is None or event.get("device_id") == self.device_id


Authenticator = Callable[[str], Awaitable[Viewer | None]]

Replayer = Callable[[StreamFilter, datetime], Awaitable[list[dict[str, Any]]]]
"""Reads the events a client missed since a time, oldest first, at most
:data:`REPLAY_MAX_EVENTS` of them."""


class StreamClient:
    """One WebSocket client of the event stream."""

    def __init__(
        self,
        protocol: ServerProtocol,
        writer: asyncio.StreamWriter,
        filters: StreamFilter,
    ) -> None:
        self.protocol = protocol
        self.writer = writer
        self.filters = filters
        self.peer = str(writer.get_extra_info("peername"))
        self.held: list[tuple[Mapping[str, Any], bytes]] | None = None
        """Live events kept back while a replay is read; None when live."""

    @property
    def open(self) -> bool:
        return self.protocol.state is State.OPEN

    def hold(self) -> None:
        """Keep live events back until :meth:`replay` has sent the past ones."""
        self.held = []

    def replay(self, past: Sequence[Mapping[str, Any]]) -> None:
        """Send ``past`` events, then the live ones held since :meth:`hold`,
        skipping those the replay already carried."""
        held, self.held = self.held or [], None
        seen = {replay_key(event) for event in past}
        for event in past:
            self.send(encode_event(event, validate=False))
        for event, message in held:
            if replay_key(event) not in seen:
                self.send(message)

    def hold_back(self, event: Mapping[str, Any], message: bytes) -> None:
        """Keep back a live event while the replay is read; send it if none is."""
        if self.held is None:
            self.send(message)
        elif len(self.held) < MAX_HELD_EVENTS:
            self.held.append((event, message))
        else:
            self.held = None
            logger.info("closing event stream of %s: replay fell behind", self.peer)
            self.protocol.fail(CloseCode.TRY_AGAIN_LATER, "replay fell behind")
            self.flush()

    def send(self, message: bytes) -> None:
        """Queue a text frame without waiting; close a client that lags."""
        if not self.open:
            return
        if self.writer.transport.get_write_buffer_size() > MAX_BUFFER_BYTES:
            logger.info("closing event stream of %s: it reads too slowly", self.peer)
            self.protocol.fail(CloseCode.TRY_AGAIN_LATER, "client reads too slowly")
        else:
            self.protocol.send_text(message)
        self.flush()

    def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.writer.write(data)
            elif self.writer.can_write_eof():
                try:
                    self.writer.write_eof()
                except OSError:
                    # The client reset the connection first (a closed tab):
                    # there is nothing left to half-close.
                    return

    async def run(self, reader: asyncio.StreamReader) -> None:
        """Answer pings and close frames until the client leaves."""
        loop = asyncio.get_running_loop()
        last_heard_s = loop.time()
        while self.protocol.state is not State.CLOSED:
            try:
                data = await asyncio.wait_for(reader.read(65536), self._wait_s())
            except TimeoutError:
                if not self._keep_alive(loop.time() - last_heard_s):
                    break
                continue
            last_heard_s = loop.time()
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            self.protocol.events_received()
            self.flush()
            if self.protocol.close_expected():
                break
        await self._finish(reader)

    def _wait_s(self) -> float:
        if self.protocol.state is State.CLOSING:
            return CLOSE_TIMEOUT_S
        return PING_INTERVAL_S

    def _keep_alive(self, silent_s: float) -> bool:
        """Ping an idle client; give up on one that stays silent."""
        if self.protocol.state is not State.OPEN:
            return False
        if silent_s >= IDLE_TIMEOUT_S:
            self.protocol.fail(CloseCode.GOING_AWAY, "no pong from client")
            self.flush()
            return False
        self.protocol.send_ping(b"")
        self.flush()
        return True

    async def _finish(self, reader: asyncio.StreamReader) -> None:
        if self.protocol.state is State.CLOSING:
            try:
                await asyncio.wait_for(reader.read(), CLOSE_TIMEOUT_S)
            except (TimeoutError, ConnectionError):
                pass
        self.writer.close()

    def close(self, code: int, reason: str) -> None:
        if self.open:
            self.protocol.send_close(code, reason)
            self.flush()


class EventStream:
    """The clients of this hub's event stream and the broadcast to them."""

    def __init__(
        self, authenticate: Authenticator, replay: Replayer | None = None
    ) -> None:
        self._authenticate = authenticate
        self._replay = replay
        self.clients: set[StreamClient] = set()

    def broadcast(self, event: Mapping[str, Any], message: bytes) -> int:
        """Send ``message`` (the encoded ``event``) to each matching client."""
        sent = 0
        for client in list(self.clients):
            if client.filters.matches(event):
                if client.held is None:
                    client.send(message)
                else:
                    client.hold_back(event, message)
                sent += 1
        return sent

    def close_all(self) -> None:
        for client in list(self.clients):
            client.close(CloseCode.GOING_AWAY, "hub is shutting down")

    async def handle(
        self,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Serve ``GET /ws/events``: authenticate, shake hands, then stream."""
        protocol = ServerProtocol(
            max_size=MAX_CLIENT_MESSAGE_BYTES, extensions=None, logger=_protocol_logger
        )
        protocol.receive_data(request.raw_head)
        handshake = protocol.events_received()[0]
        assert isinstance(handshake, WsRequest)  # noqa: S101

        filters = await self._filters(request)
        since = _since(request) if filters is not None else None
        if filters is None:
            response = protocol.reject(
                HTTPStatus.UNAUTHORIZED,
                "a valid token is required: add ?token=... or an "
                "Authorization: Bearer header\n",
            )
        elif isinstance(since, str):
            response = protocol.reject(HTTPStatus.BAD_REQUEST, since)
        else:
            response = protocol.accept(handshake)
        protocol.send_response(response)
        client = StreamClient(protocol, writer, filters or _NOBODY)
        client.flush()
        if filters is None or response.status_code != HTTPStatus.SWITCHING_PROTOCOLS:
            await writer.drain()
            return

        self.clients.add(client)
        logger.info("event stream opened by %s for %s", request.peer, filters)
        try:
            if isinstance(since, datetime):
                await self._catch_up(client, since)
            await client.run(reader)
        finally:
            self.clients.discard(client)
            logger.info("event stream of %s closed", request.peer)

    async def _catch_up(self, client: StreamClient, since: datetime) -> None:
        """Send what the client missed since ``since``, then the live events."""
        if self._replay is None:
            return
        client.hold()
        try:
            past = await self._replay(client.filters, since)
        except Exception as exc:  # the database is down: say so, do not hide it
            logger.warning("cannot replay events for %s: %s", client.peer, exc)
            client.held = None
            client.close(CloseCode.TRY_AGAIN_LATER, "history unavailable; retry")
            return
        client.replay(past)

    async def _filters(self, request: Request) -> StreamFilter | None:
        token = bearer_token(request)
        viewer = await self._authenticate(token) if token else None
        if viewer is None:
            return None
        query = request.query
        return StreamFilter(
            viewer=viewer,
            farm_id=query.get("farm") or None,
            coop_id=query.get("coop") or None,
            device_id=query.get("device") or None,
        )


_NOBODY = StreamFilter(Viewer(user_id=None, name="", roles={}))


def _since(request: Request) -> datetime | str | None:
    """The ``since=`` of a stream request, clamped to REPLAY_MAX_AGE_S; the
    reason as text when it is not a time."""
    raw = request.query.get("since")
    if not raw:
        return None
    try:
        since = parse_time(raw)
    except ValueError:
        return "since must be an RFC 3339 time or a duration such as 10m\n"
    oldest = datetime.now(UTC) - timedelta(seconds=REPLAY_MAX_AGE_S)
    return max(since, oldest)


def replay_key(event: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two events the same fact: a replayed one and its live twin."""
    kind = event.get("type")
    if kind == "alert":
        return (kind, event.get("alert_id"))
    if kind == "analysis":
        return (kind, event.get("capture_id"), event.get("model_version"))
    if kind in ("capture", "triage"):
        return (kind, event.get("capture_id"))
    return (kind, id(event))  # device events are never replayed


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer`` or else of ``?token=``."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") or None
