"""A small HTTP/1.1 server on asyncio streams, for the hub's REST API.

Why not the HTTP side of ``websockets``: it answers GET requests without a
body only, and the API takes JSON bodies on POST. This module reads one
request at a time per connection (keep-alive, ``Content-Length`` bodies, no
chunked uploads), routes it by method and path pattern, and hands requests
that ask for a WebSocket upgrade to a WebSocket handler with the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
"""Largest request line plus headers accepted."""

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body accepted; the API takes small JSON documents only."""

KEEP_ALIVE_TIMEOUT_S = 30.0
"""Idle time after which a keep-alive connection is closed."""

REQUEST_TIMEOUT_S = 30.0
"""Time a client has to send a whole request once it started."""


class HttpError(Exception):
    """An error answered to the client with ``status`` and a JSON message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """One parsed HTTP request."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_head: bytes
    peer: str
    version: str = "HTTP/1.1"
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body parsed as JSON, or an HttpError 400."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise HttpError(400, f"request body is not valid JSON: {exc}") from None

    @property
    def wants_websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


@dataclass
class Response:
    """One HTTP response."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, keep_alive: bool) -> bytes:
        reason = HTTPStatus(self.status).phrase
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        headers = {
            "Content-Type": self.content_type,
            "Content-Length": str(len(self.body)),
            "Connection": "keep-alive" if keep_alive else "close",
            **self.headers,
        }
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def json_response(document: Any, status: int = 200) -> Response:
    body = json.dumps(document, separators=(",", ":"), default=_json_default)
    return Response(status=status, body=body.encode())


def _json_default(value: Any) -> Any:
    """Times as RFC 3339 text; anything else as its string."""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def error_response(status: int, message: str) -> Response:
    document = {"error": HTTPStatus(status).phrase, "message": message}
    return json_response(document, status)


Handler = Callable[[Request], Awaitable[Response]]
UpgradeHandler = Callable[
    [Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]


class Router:
    """Routes ``(method, path)`` to handlers; ``{name}`` matches one segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._upgrades: dict[str, UpgradeHandler] = {}

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method, re.compile(f"^{regex}$"), handler))

    def add_websocket(self, path: str, handler: UpgradeHandler) -> None:
        self._upgrades[path] = handler

    def upgrade_handler(self, request: Request) -> UpgradeHandler | None:
        if request.method != "GET" or not request.wants_websocket:
            return None
        return self._upgrades.get(request.path)

    async def dispatch(self, request: Request) -> Response:
        allowed = []
        for method, regex, handler in self._routes:
            match = regex.match(request.path)
            if match is None:
                continue
            if method != request.method and not (
                method == "GET" and request.method == "HEAD"
            ):
                allowed.append(method)
                continue
            request.params = {k: unquote(v) for k, v in match.groupdict().items()}
            return await handler(request)
        if allowed:
            return error_response(405, f"use {' or '.join(allowed)} on {request.path}")
        return error_response(404, f"no such resource: {request.path}")


class HttpServer:
    """Serves a :class:`Router` on a TCP port."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> asyncio.Server:
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_HEAD_BYTES
        )
        return self._server

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101
        self._connections.add(task)
        peer = _peer_name(writer)
        try:
            await self._serve_requests(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            logger.debug("HTTP client %s went away", peer)
        except asyncio.CancelledError:
            # close() cancels idle keep-alive connections. Ending the handler
            # quietly keeps asyncio (3.11) from logging the cancellation as
            # an error in the server's own callback.
            logger.debug("HTTP connection from %s closed with the server", peer)
        except Exception:
            logger.exception("HTTP connection from %s failed", peer)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        while True:
            try:
                request = await read_request(reader, peer)
            except HttpError as exc:
                writer.write(error_response(exc.status, exc.message).encode(False))
                await writer.drain()
                return
            if request is None:
                return
            upgrade = self.router.upgrade_handler(request)
            if upgrade is not None:
                await upgrade(request, reader, writer)
                return
            response = await self._respond(request)
            keep_alive = _keeps_alive(request)
            if request.method == "HEAD":
                response.headers["Content-Length"] = str(len(response.body))
                response.body = b""
            writer.write(response.encode(keep_alive))
            await writer.drain()
            if not keep_alive:
                return

    async def _respond(self, request: Request) -> Response:
        try:
            return await self.router.dispatch(request)
        except HttpError as exc:
            return error_response(exc.status, exc.message)
        except Exception:
            logger.exception("request %s %s failed", request.method, request.path)
            return error_response(500, "the hub failed on this request; see its log")


async def read_request(reader: asyncio.StreamReader, peer: str) -> Request | None:
    """Read one request; None when the client closed the connection cleanly."""
    try:
        head = await asyncio.wait_for(
            reader.readuntil(b"\r\n\r\n"), KEEP_ALIVE_TIMEOUT_S
        )
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400, "connection closed inside the request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"request head over {MAX_HEAD_BYTES} bytes") from None
    request = parse_head(head, peer)
    length = _content_length(request)
    if length:
        request.body = await asyncio.wait_for(
            reader.readexactly(length), REQUEST_TIMEOUT_S
        )
    return request


def parse_head(head: bytes, peer: str) -> Request:
    """Parse a request line and headers, or raise HttpError 400."""
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.rstrip("\r\n").split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise HttpError(400, "malformed HTTP request line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, f"unsupported protocol {version}; use HTTP/1.1")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(501, "chunked request bodies are not supported")
    parts = urlsplit(target)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return Request(method, target, parts.path, query, headers, head, peer, version)


def _content_length(request: Request) -> int:
    raw = request.headers.get("content-length", "0")
    if not raw.isdigit():
        raise HttpError(400, f"bad Content-Length {raw!r}")
    length = int(raw)
    if length > MAX_BODY_BYTES:
        raise HttpError(413, f"request body over {MAX_BODY_BYTES} bytes")
    return length


def _keeps_alive(request: Request) -> bool:
    connection = request.headers.get("connection", "").lower()
    if request.version == "HTTP/1.0":
        return connection == "keep-alive"
    return connection != "close"


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 time, or a duration back from now such as ``30m`` or ``7d``,
    as query parameters give them; ValueError for anything else."""
    match = _DURATION.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
        except OverflowError:
            raise ValueError(f"{text.strip()[:40]} reaches before year 1") from None
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
