"""Showing the coop's latest verdict on the camera.

The display subscribes to the hub's WebSocket event stream
(``GET /ws/events?coop=ID`` with ``Authorization: Bearer TOKEN``, as
served by ``hub/stream.py``), keeps the latest triage, analysis and alert of its coop,
writes them to a JSON status file (atomically: other programs may read it at
any moment) and hands them to renderers.

A renderer is any object with ``show(status)`` and ``close()``; ``status`` is
the same dict as the status file. Renderers are named in the config by
``type``: ``console`` (one line per change on stdout, for a TTY), an entry
point of the ``farmeye.displays`` group, or ``module:Class``. Each is built
with the ``options`` of its config entry as keyword arguments, and is called
from a worker thread, so a slow e-ink panel never blocks uploads.
"""

from __future__ import annotations

import asyncio
import enum
import importlib
import importlib.metadata
import json
import logging
import os
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from edge_agent.config import RendererConfig
from farmeye.events import decode_event

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "farmeye.displays"
SHOWN_TYPES: Final = frozenset({"triage", "analysis", "alert"})
VERDICT_KEYS: Final = ("capture_id", "label", "scores", "model_version", "time")
RETRY_INITIAL_S: Final = 2.0
RETRY_MAX_S: Final = 300.0
REFUSED_RETRY_S: Final = 900.0
"""Wait after the hub refused the display's token: only a person can fix it."""
OPEN_TIMEOUT_S: Final = 20.0


class _Ended(enum.Enum):
    """How one subscription to the event stream ended."""

    CLOSED = "closed"
    FAILED = "failed"
    REFUSED = "refused"


class DisplayError(ValueError):
    """A renderer named in the config cannot be loaded."""


class Renderer(Protocol):
    """What a display plug-in implements."""

    def show(self, status: Mapping[str, Any]) -> None:
        """Draw ``status`` (the status file's content)."""

    def close(self) -> None:
        """Release the panel."""


class ConsoleRenderer:
    """One line per change on stdout, for a terminal or a serial console."""

    def show(self, status: Mapping[str, Any]) -> None:
        print(status_line(status), flush=True)

    def close(self) -> None:
        """Nothing to release."""


def status_line(status: Mapping[str, Any]) -> str:
    """``coop 3: coccidiosis (0.91, analysis of capture 812) hub: online``."""
    latest = status.get("latest")
    link = "online" if status.get("connected") else "offline"
    if not latest:
        return f"coop {status.get('coop_id')}: no verdict yet; hub: {link}"
    score = (latest.get("scores") or {}).get(latest.get("label"))
    score_text = f"{score:.2f}, " if isinstance(score, int | float) else ""
    return (
        f"coop {status.get('coop_id')}: {latest.get('label') or latest.get('message')} "
        f"({score_text}{latest['type']} of capture {latest.get('capture_id')}); "
        f"hub: {link}"
    )


def load_renderer(config: RendererConfig) -> Renderer:
    """Build the renderer a config entry names; DisplayError says what is wrong."""
    if config.type == "console":
        return ConsoleRenderer(**config.options)
    factory = _find_factory(config.type)
    renderer = factory(**config.options)
    if not callable(getattr(renderer, "show", None)):
        raise DisplayError(
            f"display renderer {config.type!r} has no show(status) method"
        )
    return renderer  # type: ignore[no-any-return]


def _find_factory(name: str) -> Any:
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise DisplayError(
                f"display renderer {name!r} cannot be loaded: {exc}"
            ) from None
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == name:
            return entry_point.load()
    raise DisplayError(
        f"no display renderer {name!r}: use 'console', 'module:Class', or install "
        f"a package with a {ENTRY_POINT_GROUP!r} entry point of that name"
    )


class StatusBoard:
    """The latest verdicts of one coop, written to the status file."""

    def __init__(self, path: Path, renderers: list[Renderer]) -> None:
        self.path = path
        self.renderers = renderers
        self.status: dict[str, Any] = {
            "coop_id": None,
            "connected": False,
            "latest": None,
            "triage": None,
            "analysis": None,
            "alert": None,
            "updated_at": None,
        }

    def apply(self, event: Mapping[str, Any]) -> bool:
        """Take in one event; True when it changed what is shown."""
        kind = event.get("type")
        if kind not in SHOWN_TYPES or str(event.get("coop_id")) != str(
            self.status["coop_id"]
        ):
            return False
        summary = {"type": kind, **{key: event.get(key) for key in VERDICT_KEYS}}
        if kind == "alert":
            summary["message"] = event.get("message")
        self.status[str(kind)] = summary
        self.status["latest"] = summary
        return True

    def set(self, **fields: Any) -> bool:
        changed = any(self.status.get(key) != value for key, value in fields.items())
        self.status.update(fields)
        return changed

    async def publish(self) -> None:
        """Write the status file and run every renderer, off the event loop."""
        self.status["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        snapshot = json.loads(json.dumps(self.status))
        await asyncio.to_thread(self._publish, snapshot)

    def _publish(self, snapshot: dict[str, Any]) -> None:
        try:
            write_json_atomically(self.path, snapshot)
        except OSError as exc:
            logger.warning("cannot write display status %s: %s", self.path, exc)
        for renderer in self.renderers:
            try:
                renderer.show(snapshot)
            except Exception:
                logger.exception("display renderer %r failed", renderer)

    def close(self) -> None:
        for renderer in self.renderers:
            try:
                renderer.close()
            except Exception:
                logger.exception("display renderer %r failed to close", renderer)


def write_json_atomically(path: Path, value: Any) -> None:
    """Readers see the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(value, stream, indent=2, sort_keys=True)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


class Display:
    """Follows one coop's verdicts on the hub's event stream."""

    def __init__(
        self,
        url: str,
        token: str | None,
        board: StatusBoard,
        coop_id: int | str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.board = board
        self._coop_known = asyncio.Event()
        self._rng = rng or random.Random()
        self.events_seen = 0
        if coop_id is not None:
            self.set_coop(coop_id)

    def set_coop(self, coop_id: int | str) -> None:
        """Follow ``coop_id`` (given by the hub's auth_ok unless configured)."""
        if self._coop_known.is_set():
            return
        self.board.set(coop_id=coop_id)
        self._coop_known.set()

    def stream_url(self) -> str:
        """The configured URL with ``coop=ID`` added to its query."""
        parts = urlsplit(self.url)
        query = dict(parse_qsl(parts.query))
        query["coop"] = str(self.board.status["coop_id"])
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def run(self) -> None:
        """Subscribe, show, resubscribe after failures; cancel to stop."""
        await self._coop_known.wait()
        await self.board.publish()
        failures = 0
        while True:
            outcome = await self._subscribe_once()
            failures = 0 if outcome is _Ended.CLOSED else failures + 1
            await asyncio.sleep(self._retry_delay_s(outcome, failures))

    def _retry_delay_s(self, outcome: _Ended, failures: int) -> float:
        """Jittered: long after a refused token, else doubling up to a cap."""
        if outcome is _Ended.REFUSED:
            return self._rng.uniform(REFUSED_RETRY_S / 2, REFUSED_RETRY_S)
        cap_s = min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** min(failures, 16))
        return self._rng.uniform(RETRY_INITIAL_S / 2, max(cap_s, RETRY_INITIAL_S))

    async def _subscribe_once(self) -> _Ended:
        """One subscription, until it ends; says how."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        url = self.stream_url()
        try:
            async with connect(
                url,
                additional_headers=headers,
                compression=None,
                open_timeout=OPEN_TIMEOUT_S,
            ) as socket:
                await self._connected(True)
                async for message in socket:
                    await self._on_message(message)
        except InvalidStatus as exc:
            return self._refused(exc.response.status_code)
        except (OSError, TimeoutError, WebSocketException) as exc:
            logger.info("event stream %s unavailable: %s", _redact(url), exc)
            await self._connected(False)
            return _Ended.FAILED
        await self._connected(False)
        return _Ended.CLOSED

    def _refused(self, status_code: int) -> _Ended:
        if status_code in (401, 403):
            logger.error(
                "hub refused the display's token (HTTP %s); set display.token to a "
                "token from `farmeye users add` that may see this coop",
                status_code,
            )
            return _Ended.REFUSED
        logger.warning("event stream answered HTTP %s", status_code)
        return _Ended.FAILED

    async def _connected(self, connected: bool) -> None:
        if self.board.set(connected=connected):
            await self.board.publish()

    async def _on_message(self, message: str | bytes) -> None:
        try:
            event = decode_event(message)
        except ValueError as exc:
            logger.warning("ignoring a bad event from the hub: %s", exc)
            return
        self.events_seen += 1
        if self.board.apply(event):
            await self.board.publish()


def _redact(url: str) -> str:
    """The URL without its query, which may hold a token."""
    return urlunsplit(urlsplit(url)._replace(query=""))
