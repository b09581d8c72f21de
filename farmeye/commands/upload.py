"""``farmeye upload``: send photos by hand over the cameras' own protocol.

A veterinarian or a data scientist uses it to put photos through the same
path as a coop camera: authenticated as a device, acknowledged only once
stored. With ``--wait`` it also follows the hub's event stream until each
photo has its triage and its full analysis verdict.

Addresses default to the ``farmeye up`` running on this machine (its
``run.json``), then to the configured ingest and HTTP ports. ``--wait`` needs
a user token: ``--token``, ``$FARMEYE_TOKEN``, or the local admin token that
``farmeye up`` keeps in ``run.json``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from farmeye.commands.db import config_option

if TYPE_CHECKING:
    from farmeye.config import Settings
    from farmeye.device_client import DeviceClient

PARALLEL_UPLOADS = 8
"""Photos in flight at once on the one connection (pipelined)."""


@dataclass
class Outcome:
    """What became of one photo."""

    file: Path
    started_s: float
    capture_id: int | None = None
    duplicate: bool = False
    error: dict[str, Any] | None = None
    triage: dict[str, Any] | None = None
    analysis: dict[str, Any] | None = None
    finished_s: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def document(self) -> dict[str, Any]:
        end_s = self.finished_s or time.perf_counter()
        result: dict[str, Any] = {
            "file": str(self.file),
            "capture_id": self.capture_id,
            "duplicate": self.duplicate,
            "triage": self.triage,
            "analysis": self.analysis,
            "latency_ms": round((end_s - self.started_s) * 1000.0, 1),
        }
        if self.error is not None:
            result["error"] = self.error
        return result


@dataclass(frozen=True)
class Target:
    ingest: str
    http: str
    token: str | None
    ssl_context: ssl.SSLContext | None


@click.command()
@click.argument(
    "images",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--device",
    required=True,
    envvar="FARMEYE_DEVICE_ID",
    help="Device id to upload as (from `farmeye devices add`).",
)
@click.option(
    "--secret",
    required=True,
    envvar="FARMEYE_DEVICE_SECRET",
    help="The device's secret; $FARMEYE_DEVICE_SECRET keeps it out of `ps`.",
)
@click.option(
    "--hub",
    "hub_address",
    default=None,
    help="HOST:PORT of the hub's ingest (default: the local `farmeye up`).",
)
@click.option(
    "--wait", is_flag=True, help="Wait for each photo's triage and analysis verdicts."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per image instead of text.",
)
@click.option(
    "--token",
    envvar="FARMEYE_TOKEN",
    default=None,
    help="User token for --wait (default: that of the local `farmeye up`).",
)
@click.option(
    "--http",
    "http_url",
    default=None,
    help="Hub HTTP URL for --wait (default: the local `farmeye up`).",
)
@click.option("--tls", is_flag=True, help="Speak TLS to the hub's ingest.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for acks and verdicts.",
)
@config_option
def upload(
    images: tuple[Path, ...],
    device: str,
    secret: str,
    hub_address: str | None,
    wait: bool,
    as_json: bool,
    token: str | None,
    http_url: str | None,
    tls: bool,
    timeout_s: float,
    config_file: Path | None,
) -> None:
    """Upload IMAGE files to the hub as device ID, like a camera would."""
    from farmeye.config import ConfigError, load_settings

    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    target = _target(settings, hub_address, http_url, token, tls)
    if wait and not target.token:
        raise click.ClickException(
            "--wait needs a user token: pass --token or set FARMEYE_TOKEN "
            "(a local `farmeye up` provides one)"
        )
    outcomes = asyncio.run(
        _upload_all(list(images), device, secret, target, wait, as_json, timeout_s)
    )
    for outcome in outcomes:
        _report(outcome, as_json)
    if any(outcome.error for outcome in outcomes):
        sys.exit(1)


def _target(
    settings: Settings,
    hub_address: str | None,
    http_url: str | None,
    token: str | None,
    tls: bool,
) -> Target:
    from farmeye.config import read_run_info

    info = read_run_info(settings.data_dir) or {}
    ingest = hub_address or info.get("ingest")
    ingest = ingest or f"{_reachable(settings.ingest_host)}:{settings.ingest_port}"
    http = http_url or info.get("http")
    http = http or f"http://{_reachable(settings.http_host)}:{settings.http_port}"
    context = None
    if tls or settings.tls_enabled:
        context = ssl.create_default_context()
        if settings.tls_cert is not None:
            context.load_verify_locations(settings.tls_cert)
    return Target(ingest, http.rstrip("/"), token or info.get("token"), context)


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


async def _upload_all(
    images: list[Path],
    device: str,
    secret: str,
    target: Target,
    wait: bool,
    as_json: bool,
    timeout_s: float,
) -> list[Outcome]:
    from farmeye.auth import DeviceCredentials
    from farmeye.device_client import DeviceClient, HubError, parse_address

    outcomes = [Outcome(path, time.perf_counter()) for path in images]
    watcher = _VerdictWatcher(target, device, outcomes) if wait else None
    if watcher is not None:
        await watcher.open()
    client = DeviceClient(
        DeviceCredentials(device, secret),
        *parse_address(target.ingest),
        ssl_context=target.ssl_context,
        timeout_s=timeout_s,
    )
    try:
        await client.connect()
    except (HubError, OSError, TimeoutError) as exc:
        raise click.ClickException(
            f"cannot connect to the hub at {target.ingest}: {exc}"
        ) from None
    try:
        await _send_all(client, outcomes, show_progress=not as_json)
        if watcher is not None:
            await watcher.wait_all(timeout_s)
    finally:
        await client.close()
        if watcher is not None:
            await watcher.close()
    return outcomes


async def _send_all(
    client: DeviceClient, outcomes: list[Outcome], show_progress: bool
) -> None:
    from farmeye.device_client import HubError, LinkClosed

    slots = asyncio.Semaphore(PARALLEL_UPLOADS)
    progress = _Progress(len(outcomes), enabled=show_progress and sys.stderr.isatty())

    async def send(outcome: Outcome) -> None:
        async with slots:
            data = await asyncio.to_thread(outcome.file.read_bytes)
            outcome.started_s = time.perf_counter()
            try:
                ack = await client.upload(data)
            except (HubError, LinkClosed, TimeoutError) as exc:
                code = getattr(exc, "code", "connection")
                outcome.error = {"code": code, "message": str(exc)}
            else:
                outcome.capture_id, outcome.duplicate = ack.capture_id, ack.duplicate
            outcome.finished_s = time.perf_counter()
            progress.advance()

    await asyncio.gather(*(send(outcome) for outcome in outcomes))
    progress.close()


class _Progress:
    """A one-line progress bar on a terminal's stderr, else nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.count = total, enabled, 0

    def advance(self) -> None:
        self.count += 1
        if self.enabled:
            filled = int(30 * self.count / self.total)
            bar = "#" * filled + "-" * (30 - filled)
            click.echo(f"\r[{bar}] {self.count}/{self.total}", nl=False, err=True)

    def close(self) -> None:
        if self.enabled:
            click.echo("", err=True)


class _VerdictWatcher:
    """Follows the device's events until each capture has both verdicts.

    A verdict can arrive before the ack that names its capture has been
    read (triage is often done by the time the hub acks), so every verdict
    heard is kept by capture id, with the time it came, until a capture
    claims it.
    """

    def __init__(self, target: Target, device: str, outcomes: list[Outcome]) -> None:
        self.target = target
        self.device = device
        self.outcomes = outcomes
        self._heard: dict[int, dict[str, tuple[dict[str, Any], float]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._socket: Any = None

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        url = self.target.http.replace("http", "ws", 1) + "/ws/events"
        query = f"?device={self.device}"
        headers = {"Authorization": f"Bearer {self.target.token}"}
        try:
            self._socket = await connect(
                url + query, additional_headers=headers, compression=None
            )
        except Exception as exc:
            raise click.ClickException(
                f"cannot follow events at {url}: {exc}; check --http and --token"
            ) from None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            self._apply(json.loads(message))

    def _apply(self, event: dict[str, Any]) -> None:
        capture_id, kind = event.get("capture_id"), event.get("type")
        if not isinstance(capture_id, int) or kind not in ("triage", "analysis"):
            return
        verdict = {"label": event.get("label"), "scores": event.get("scores")}
        if event.get("error"):
            verdict["error"] = event["error"]
        self._heard.setdefault(capture_id, {})[kind] = (verdict, time.perf_counter())
        for outcome in self.outcomes:
            if outcome.capture_id == capture_id:
                self._settle(outcome)

    def _settle(self, outcome: Outcome) -> None:
        """Give ``outcome`` the verdicts heard for its capture; done when both are."""
        heard = self._heard.get(outcome.capture_id or -1, {})
        if "triage" in heard:
            outcome.triage = heard["triage"][0]
        if "analysis" in heard:
            outcome.analysis = heard["analysis"][0]
        if outcome.done.is_set():
            return
        if outcome.error or (outcome.triage and outcome.analysis):
            arrivals = [at_s for _, at_s in heard.values()]
            outcome.finished_s = max(arrivals, default=time.perf_counter())
            outcome.done.set()

    async def wait_all(self, timeout_s: float) -> None:
        """Fill in duplicates from the API, then wait for what is missing."""
        for outcome in self.outcomes:
            if outcome.duplicate and outcome.capture_id is not None:
                self._fill_from_api(outcome, await self._fetch(outcome.capture_id))
            self._settle(outcome)
        waits = [outcome.done.wait() for outcome in self.outcomes]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        except TimeoutError:
            for outcome in self.outcomes:
                if not outcome.done.is_set():
                    outcome.error = {
                        "code": "timeout",
                        "message": f"no verdicts within {timeout_s:g} s",
                    }

    def _fill_from_api(self, outcome: Outcome, capture: dict[str, Any]) -> None:
        for kind in ("triage", "analysis"):
            found = capture.get(kind)
            if found and found.get("label"):
                verdict = {"label": found["label"], "scores": found.get("scores")}
                setattr(outcome, kind, verdict)

    async def _fetch(self, capture_id: int) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - http(s) URL we built
            f"{self.target.http}/api/captures/{capture_id}",
            headers={"Authorization": f"Bearer {self.target.token}"},
        )

        def get() -> dict[str, Any]:
            try:
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                    document: dict[str, Any] = json.load(response)
                    return document
            except (urllib.error.URLError, ValueError):
                return {}

        return await asyncio.to_thread(get)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._socket is not None:
            await self._socket.close()


def _report(outcome: Outcome, as_json: bool) -> None:
    document = outcome.document()
    if as_json:
        click.echo(json.dumps(document))
        return
    if outcome.error:
        click.echo(f"{outcome.file}: failed: {outcome.error['message']}")
        return
    parts = [
        f"{outcome.file}: capture {outcome.capture_id}"
        + (" (already uploaded)" if outcome.duplicate else "")
    ]
    for kind in ("triage", "analysis"):
        verdict = getattr(outcome, kind)
        if verdict and verdict.get("label"):
            score = (verdict.get("scores") or {}).get(verdict["label"])
            shown = f" {score:.2f}" if isinstance(score, int | float) else ""
            parts.append(f"{kind} {verdict['label']}{shown}")
    parts.append(f"{document['latency_ms']:.0f} ms")
    click.echo(", ".join(parts))
