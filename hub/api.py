"""The hub's HTTP face: REST history, photos, feedback, device commands,
health, metrics, the OpenAPI description, the dashboard and the event stream.

Every ``/api`` route needs a user token (``Authorization: Bearer`` or
``?token=``) and shows only the farms the user belongs to; a capture of
another farm answers 404 as if it did not exist. ``static/openapi.json``
describes the routes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from farmeye import protocol
from farmeye.db import DatabaseUnavailable
from farmeye.heatmaps import MapError
from farmeye.imaging import ImageError
from farmeye.labels import LABELS
from hub import repository
from hub.database import Database
from hub.http import (
    HttpError,
    Request,
    Response,
    Router,
    json_response,
    parse_time,
)
from hub.metrics import HubMetrics
from hub.repository import CaptureQuery
from hub.store import ImageStore
from hub.stream import EventStream, Viewer, bearer_token
from hub.users import Users

logger = logging.getLogger(__name__)

MAX_PAGE = 500
"""Largest ``limit`` of a listing."""

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}

IMMUTABLE = {"Cache-Control": "private, max-age=31536000, immutable"}
"""Photos are addressed by content, so a client may keep them for good."""

CommandSender = Callable[[str, str, dict[str, Any]], Awaitable[int]]


@dataclass
class ApiContext:
    """What the routes need from the rest of the hub."""

    database: Database
    store: ImageStore
    metrics: HubMetrics
    stream: EventStream
    send_command: CommandSender
    device_health: Callable[[], dict[str, dict[str, Any]]]
    health: Callable[[], Awaitable[dict[str, Any]]]
    users: Users


class Api:
    """Route handlers; :meth:`router` wires them to paths."""

    def __init__(self, context: ApiContext) -> None:
        self.context = context

    def router(self) -> Router:
        router = Router()
        routes: list[tuple[str, str, Callable[[Request], Awaitable[Response]]]] = [
            ("GET", "/", self.dashboard),
            ("GET", "/static/{name}", self.static),
            ("GET", "/healthz", self.healthz),
            ("GET", "/metrics", self.metrics),
            ("GET", "/openapi.json", self.openapi),
            ("GET", "/api/captures", self.list_captures),
            ("GET", "/api/captures/{capture_id}", self.get_capture),
            ("GET", "/api/captures/{capture_id}/image", self.capture_image),
            ("GET", "/api/captures/{capture_id}/thumbnail", self.capture_thumbnail),
            ("GET", "/api/captures/{capture_id}/heatmap", self.capture_heatmap),
            ("POST", "/api/captures/{capture_id}/feedback", self.add_feedback),
            ("GET", "/api/alerts", self.list_alerts),
            ("GET", "/api/devices", self.list_devices),
            ("POST", "/api/devices/{device_id}/commands", self.device_command),
        ]
        for method, pattern, handler in routes:
            router.add(method, pattern, handler)
        router.add_websocket("/ws/events", self.context.stream.handle)
        return router

    # Authentication

    async def _require_viewer(self, request: Request) -> Viewer:
        token = bearer_token(request)
        viewer = await self._viewer_or_unavailable(token) if token else None
        if viewer is None:
            raise HttpError(
                401,
                "a valid token is required: send Authorization: Bearer TOKEN "
                "(get one with `farmeye users add`)",
            )
        return viewer

    async def _viewer_or_unavailable(self, token: str) -> Viewer | None:
        try:
            return await self.context.users.viewer(token)
        except DatabaseUnavailable as exc:
            raise HttpError(503, f"database unavailable: {exc}") from None

    async def _run(self, work: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self.context.database.run(work, *args)
        except DatabaseUnavailable as exc:
            raise HttpError(
                503, f"database unavailable, retry shortly: {exc}"
            ) from None

    # Plain pages

    async def dashboard(self, request: Request) -> Response:
        return _static_file("index.html")

    async def static(self, request: Request) -> Response:
        return _static_file(request.params["name"])

    async def openapi(self, request: Request) -> Response:
        return _static_file("openapi.json")

    async def metrics(self, request: Request) -> Response:
        return Response(
            body=self.context.metrics.render(), content_type=CONTENT_TYPE_LATEST
        )

    async def healthz(self, request: Request) -> Response:
        report = await self.context.health()
        return json_response(report, 200 if report["status"] == "ok" else 503)

    # Captures

    async def list_captures(self, request: Request) -> Response:
        viewer = await self._require_viewer(request)
        query = capture_query(request.query, viewer.farm_scope())
        rows = await self._run(repository.list_captures, query)
        page, more = rows[: query.limit], len(rows) > query.limit
        next_cursor = None
        if more:
            last = page[-1]
            next_cursor = repository.encode_cursor(last["captured_at"], last["id"])
        return json_response(
            {"captures": [_with_links(r) for r in page], "next_cursor": next_cursor}
        )

    async def get_capture(self, request: Request) -> Response:
        viewer = await self._require_viewer(request)
        capture_id = _int_param(request.params["capture_id"], "capture id")
        row = await self._run(repository.get_capture, capture_id)
        if row is None or not viewer.may_see(row["farm_id"]):
            raise _no_capture(capture_id)
        return json_response(_with_links(row))

    async def capture_image(self, request: Request) -> Response:
        key, content_type = await self._visible_file(request)
        data = await _in_thread(self.context.store.get, key)
        return Response(body=data, content_type=content_type, headers=dict(IMMUTABLE))

    async def capture_thumbnail(self, request: Request) -> Response:
        key, _ = await self._visible_file(request)
        data = await _in_thread(self.context.store.thumbnail, key)
        return Response(body=data, content_type="image/jpeg", headers=dict(IMMUTABLE))

    async def capture_heatmap(self, request: Request) -> Response:
        key, _ = await self._visible_file(request)
        capture_id = int(request.params["capture_id"])
        found = await self._run(repository.heatmap, capture_id)
        if found is None:
            raise HttpError(404, f"capture {capture_id} has no heatmap yet")
        png, evidence = found
        if png is None and evidence is not None:
            try:
                png = await _in_thread(self.context.store.heatmap, key, evidence)
            except MapError as exc:
                logger.error("stored heatmap of capture %s: %s", capture_id, exc)
                raise HttpError(
                    500, f"the heatmap of capture {capture_id} is unreadable"
                ) from None
        return Response(body=png, content_type="image/png")

    async def _visible_file(self, request: Request) -> tuple[str, str]:
        viewer = await self._require_viewer(request)
        capture_id = _int_param(request.params["capture_id"], "capture id")
        found = await self._run(repository.capture_file, capture_id)
        if found is None or not viewer.may_see(found.farm_id):
            raise _no_capture(capture_id)
        if found.photo_deleted_at is not None:
            raise HttpError(
                410,
                f"the photo of capture {capture_id} was deleted on "
                f"{found.photo_deleted_at:%Y-%m-%d} (photo_retention_days)",
            )
        return found.storage_key, found.content_type

    async def add_feedback(self, request: Request) -> Response:
        viewer = await self._require_viewer(request)
        capture_id = _int_param(request.params["capture_id"], "capture id")
        label, note = feedback_body(request.json())
        found = await self._run(repository.capture_file, capture_id)
        if found is None or not viewer.may_see(found.farm_id):
            raise _no_capture(capture_id)
        if not viewer.may_act(found.farm_id):
            raise HttpError(
                403, "only a manager or admin of the farm may give feedback"
            )
        document = await self._run(
            repository.add_feedback, capture_id, viewer.user_id, label, note
        )
        return json_response(document, 201)

    # Alerts and devices

    async def list_alerts(self, request: Request) -> Response:
        viewer = await self._require_viewer(request)
        scope = _narrow(viewer.farm_scope(), _opt_int(request.query, "farm"))
        coop_id = _opt_int(request.query, "coop")
        limit = _limit(request.query)
        rows = await self._run(repository.list_alerts, scope, coop_id, limit)
        return json_response({"alerts": rows})

    async def list_devices(self, request: Request) -> Response:
        viewer = await self._require_viewer(request)
        scope = _narrow(viewer.farm_scope(), _opt_int(request.query, "farm"))
        rows = await self._run(repository.list_devices, scope)
        health = self.context.device_health()
        for row in rows:
            row["health"] = health.get(row["id"])
        return json_response({"devices": rows})

    async def device_command(self, request: Request) -> Response:
        viewer = await self._require_viewer(request)
        device_id = request.params["device_id"]
        name, args = command_body(request.json())
        farm_id = await self._run(repository.device_farm, device_id)
        if farm_id is None or not viewer.may_see(farm_id):
            raise HttpError(404, f"no device {device_id}")
        if not viewer.may_act(farm_id):
            raise HttpError(
                403, "only a manager or admin of the farm may command devices"
            )
        if name == "set_schedule":
            # Kept first: a device that is offline, or reconnects before the
            # frame reaches it, gets it in its next auth_ok.
            await self._run(repository.set_device_schedule, device_id, args)
        try:
            command_id: int | None = await self.context.send_command(
                device_id, name, args
            )
        except KeyError:
            if name != "set_schedule":
                raise HttpError(
                    409,
                    f"device {device_id} is not connected to this hub; retry "
                    "when it is online",
                ) from None
            command_id = None
        document = {
            "device_id": device_id,
            "command_id": command_id,
            "name": name,
            "args": args,
            "delivered": command_id is not None,
        }
        return json_response(document, 202)


# Request parsing


def capture_query(query: dict[str, str], scope: list[int] | None) -> CaptureQuery:
    """The filters of ``GET /api/captures``; HttpError 400 names a bad one."""
    label = query.get("label") or None
    if label is not None and label not in LABELS:
        raise HttpError(400, f"label must be one of {', '.join(LABELS)}")
    after = None
    if query.get("cursor"):
        try:
            after = repository.decode_cursor(query["cursor"])
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
    return CaptureQuery(
        farm_ids=scope,
        farm_id=_opt_int(query, "farm"),
        coop_id=_opt_int(query, "coop"),
        device_id=query.get("device") or None,
        label=label,
        since=_opt_time(query, "since"),
        until=_opt_time(query, "until"),
        limit=_limit(query),
        after=after,
    )


def feedback_body(body: Any) -> tuple[str, str | None]:
    if not isinstance(body, dict) or body.get("label") not in LABELS:
        raise HttpError(
            400, f'send {{"label": one of {", ".join(LABELS)}, "note": optional text}}'
        )
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > 2000):
        raise HttpError(400, "note must be text of at most 2000 characters")
    return body["label"], note


def command_body(body: Any) -> tuple[str, dict[str, Any]]:
    """``(name, args)`` of a device command, checked against command.json."""
    if not isinstance(body, dict) or not isinstance(body.get("args", {}), dict):
        raise HttpError(
            400, 'send {"name": "capture_now" or "set_schedule", "args": {...}}'
        )
    name, args = body.get("name"), body.get("args", {})
    try:
        protocol.validate_header(protocol.command(1, str(name), **args))
    except protocol.ProtocolError as exc:
        raise HttpError(400, f"bad command: {exc}") from None
    return str(name), args


def _opt_int(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    return None if not raw else _int_param(raw, name)


def _int_param(raw: str, name: str) -> int:
    if not raw.isdigit():
        raise HttpError(400, f"{name} must be a positive integer, got {raw[:40]!r}")
    return int(raw)


def _opt_time(query: dict[str, str], name: str) -> datetime | None:
    raw = query.get(name)
    if not raw:
        return None
    try:
        return parse_time(raw)
    except ValueError:
        raise HttpError(
            400, f"{name} must be an RFC 3339 time or a duration such as 24h"
        ) from None


def _limit(query: dict[str, str]) -> int:
    limit = _opt_int(query, "limit") or 50
    return max(1, min(limit, MAX_PAGE))


def _narrow(scope: list[int] | None, farm_id: int | None) -> list[int] | None:
    if farm_id is None:
        return scope
    return [farm_id] if scope is None or farm_id in scope else []


def _with_links(row: dict[str, Any]) -> dict[str, Any]:
    base = f"/api/captures/{row['id']}"
    row["links"] = {
        "self": base,
        "image": f"{base}/image",
        "thumbnail": f"{base}/thumbnail",
        "heatmap": f"{base}/heatmap",
    }
    return row


def _no_capture(capture_id: int) -> HttpError:
    return HttpError(404, f"no capture {capture_id}")


async def _in_thread(function: Callable[..., bytes], key: str, *args: Any) -> bytes:
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, function, key, *args)
    except FileNotFoundError:
        raise HttpError(404, "the photo is missing from the store") from None
    except ImageError as exc:
        raise HttpError(422, f"the photo cannot be shown: {exc}") from None


def _static_file(name: str) -> Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        raise HttpError(404, f"no static file {name}")
    try:
        body = resources.files("hub").joinpath("static", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise HttpError(404, f"no static file {name}") from None
    return Response(body=body, content_type=STATIC_TYPES[suffix])
