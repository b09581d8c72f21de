"""Moving spooled photos to the hub over one persistent connection.

One :class:`farmeye.device_client.DeviceClient` at a time: connect (TLS when
configured), authenticate, then send spooled photos oldest first with up to
``window`` of them unacknowledged. A photo leaves the spool only when its ack
arrives. When the connection fails, the next one starts again from the
oldest photo still in the spool: a photo sent but not acknowledged is sent
again, and the hub, idempotent by content hash, answers with the same
capture.

Between attempts the uploader waits with exponential backoff and full jitter
(a random wait between zero and a cap that doubles per failure), so a hub
coming back after an outage is not hit by every camera of the farm at once.
A hub that refuses the device itself (wrong secret, revoked) gets an ERROR
line saying what to fix and a long wait: retrying sooner cannot help.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any, Final

from edge_agent.clock import HubClock
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.health import AGENT_VERSION, HealthReporter
from edge_agent.spool import AsyncSpool, Entry
from farmeye import protocol
from farmeye.auth import DeviceCredentials
from farmeye.device_client import (
    Ack,
    DeviceClient,
    HubError,
    LinkClosed,
    Welcome,
    parse_address,
)

logger = logging.getLogger(__name__)

REFUSAL_CODES: Final = frozenset({"auth_failed", "device_revoked", "auth_required"})
"""Hub errors about the device itself: only a person can fix them."""

LINK_ERRORS: Final = (LinkClosed, OSError, TimeoutError, protocol.ProtocolError)
"""Failures of the network or the hub process: back off and reconnect."""

CommandHandler = Callable[[dict[str, Any]], None]
WelcomeHandler = Callable[[Welcome], None]


class Outcome(enum.Enum):
    """How one connection ended, which decides the wait before the next."""

    STABLE = "stable"
    FAILED = "failed"
    REFUSED = "refused"


class Backoff:
    """Exponential backoff with full jitter."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0
        self._rng = rng

    def next_delay_s(self) -> float:
        """A wait between zero and a cap that doubles with each failure."""
        cap_s = min(self.max_s, self.initial_s * 2 ** min(self.failures, 32))
        self.failures += 1
        return self._rng.uniform(0, cap_s)

    def reset(self) -> None:
        self.failures = 0


class Uploader:
    """Keeps a connection to the hub and drains the spool through it."""

    def __init__(
        self,
        config: AgentConfig,
        spool: AsyncSpool,
        health: HealthReporter,
        *,
        on_command: CommandHandler | None = None,
        on_welcome: WelcomeHandler | None = None,
        clock: HubClock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        """Set from each handshake, and re-times photos spooled before one."""
        self.spool = spool
        self.health = health
        self.on_command = on_command
        self.on_welcome = on_welcome
        self.host, self.port = parse_address(config.hub.address)
        self.credentials = DeviceCredentials(config.device_id, config.device_secret())
        self.ssl_context = _ssl_context(config)
        self._rng = rng or random.Random()
        self.backoff = Backoff(
            config.uploader.backoff_initial_s, config.uploader.backoff_max_s, self._rng
        )
        self.attempts = 0
        """Connection attempts since start."""
        self.acked = 0
        """Photos acknowledged by the hub since start."""
        self.connected = False
        self._work = asyncio.Event()
        self._health_due = asyncio.Event()
        self._acked_this_session = False

    def notify(self) -> None:
        """A photo entered the spool."""
        self._work.set()

    def request_health(self) -> None:
        """Send a health report soon (e.g. after the spool dropped photos)."""
        self._health_due.set()

    async def run(self) -> None:
        """Connect, upload, reconnect, forever; cancel the task to stop."""
        while True:
            outcome = await self._session()
            delay_s = self._delay_after(outcome)
            logger.info("reconnecting to the hub in %.1fs", delay_s)
            await asyncio.sleep(delay_s)

    def _delay_after(self, outcome: Outcome) -> float:
        if outcome is Outcome.REFUSED:
            retry_s = self.config.uploader.auth_retry_s
            return self._rng.uniform(retry_s / 2, retry_s)
        if outcome is Outcome.STABLE:
            self.backoff.reset()
        return self.backoff.next_delay_s()

    # One connection

    async def _session(self) -> Outcome:
        client = DeviceClient(
            self.credentials,
            self.host,
            self.port,
            ssl_context=self.ssl_context,
            agent_version=AGENT_VERSION,
            timeout_s=self.config.uploader.ack_timeout_s,
            on_command=self.on_command,
            sync_clock=self.clock is not None,
        )
        self.attempts += 1
        logger.info("connecting to hub %s:%s", self.host, self.port)
        try:
            welcome = await client.connect()
        except HubError as exc:
            return self._hub_error(exc)
        except LINK_ERRORS as exc:
            logger.info("hub %s:%s unreachable: %s", self.host, self.port, _why(exc))
            return Outcome.FAILED
        return await self._connected(client, welcome)

    async def _connected(self, client: DeviceClient, welcome: Welcome) -> Outcome:
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        self.connected, self._acked_this_session = True, False
        logger.info(
            "connected to hub %s:%s as %s (coop %s)",
            self.host,
            self.port,
            welcome.device_id,
            welcome.coop_id,
        )
        if self.clock is not None and welcome.hub_time is not None:
            self.clock.sync(welcome.hub_time)
        if self.on_welcome is not None:
            self.on_welcome(welcome)
        try:
            failure = await self._serve(client)
        finally:
            self.connected = False
            await client.close()
        if isinstance(failure, HubError):
            return self._hub_error(failure)
        logger.info(
            "lost connection to hub %s:%s: %s", self.host, self.port, _why(failure)
        )
        lasted_s = loop.time() - started_s
        if self._acked_this_session or lasted_s >= self.config.uploader.stable_after_s:
            return Outcome.STABLE
        return Outcome.FAILED

    async def _serve(self, client: DeviceClient) -> BaseException:
        """Upload and report health until the connection fails; return why."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(client, group), name="upload-pump")
                group.create_task(self._report_health(client), name="health")
                group.create_task(self._watch(client), name="link-watch")
        except ExceptionGroup as failures:
            cause = failures.exceptions[0]
            if isinstance(cause, (HubError, *LINK_ERRORS)):
                return cause
            raise
        raise AssertionError("the connection tasks never end without a failure")

    async def _watch(self, client: DeviceClient) -> None:
        await client.wait_closed()
        raise client.failure or LinkClosed("hub closed the connection")

    def _hub_error(self, exc: HubError) -> Outcome:
        if exc.code in REFUSAL_CODES:
            logger.error(
                "hub %s:%s refused device %s (%s: %s); check device_id and the "
                "secret in the agent config, or register the camera again with "
                "`farmeye devices add`; retrying in about %.0fs",
                self.host,
                self.port,
                self.config.device_id,
                exc.code,
                exc.message,
                self.config.uploader.auth_retry_s,
            )
            return Outcome.REFUSED
        logger.warning("hub %s:%s reported %s", self.host, self.port, exc)
        return Outcome.FAILED

    # Uploads

    async def _pump(self, client: DeviceClient, group: asyncio.TaskGroup) -> None:
        """Start uploads oldest first, at most ``window`` unacknowledged."""
        window = asyncio.Semaphore(self.config.uploader.window)
        last_seq = 0
        while True:
            await window.acquire()
            entry = await self._next_entry(last_seq)
            last_seq = entry.seq
            group.create_task(self._upload(client, entry, window))

    async def _next_entry(self, last_seq: int) -> Entry:
        while True:
            self._work.clear()
            entry = await self.spool.next_after(last_seq)
            if entry is not None:
                return entry
            await self._work.wait()

    async def _upload(
        self, client: DeviceClient, entry: Entry, window: asyncio.Semaphore
    ) -> None:
        try:
            photo = await self.spool.read(entry)
            if photo is None:
                return
            extra = photo.extra
            try:
                ack = await self._send(client, entry, photo.data, extra)
            except HubError as exc:
                if exc.retryable or exc.code in REFUSAL_CODES:
                    raise
                await self.spool.quarantine(entry, f"the hub refused it ({exc})")
                self.request_health()
                return
            await self.spool.remove(entry)
            self.acked += 1
            self._acked_this_session = True
            logger.debug("photo %s is capture %s", entry.name, ack.capture_id)
        finally:
            window.release()

    async def _send(
        self, client: DeviceClient, entry: Entry, data: bytes, extra: dict[str, Any]
    ) -> Ack:
        captured_at = entry.captured_at
        if self.clock is not None:
            captured_at = self.clock.restamp(captured_at, extra.get("clock"))
        try:
            return await client.upload(
                data,
                captured_at=captured_at,
                content_type=entry.content_type,
                meta=extra.get("meta"),
                triage=extra.get("triage"),
            )
        except protocol.ProtocolError as exc:
            logger.warning("sending %s without meta and triage: %s", entry.name, exc)
            return await client.upload(
                data, captured_at=captured_at, content_type=entry.content_type
            )

    # Health

    async def _report_health(self, client: DeviceClient) -> None:
        interval_s = self.config.health.interval_s
        while True:
            self._health_due.clear()
            await client.send_health(**await self.health.report())
            try:
                await asyncio.wait_for(self._health_due.wait(), interval_s)
            except TimeoutError:
                pass


def _ssl_context(config: AgentConfig) -> ssl.SSLContext | None:
    if not config.hub.tls:
        return None
    ca_file = config.hub.ca_file
    try:
        return ssl.create_default_context(
            cafile=str(ca_file.expanduser()) if ca_file is not None else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"hub.ca_file {ca_file} cannot be used: {exc}") from None


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
