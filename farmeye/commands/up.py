"""``farmeye up``: the whole system on one machine, for a farm or a first try.

With no database or Redis configured it starts the embedded PostgreSQL and
Redis in ``DATA_DIR``, applies migrations, starts one analysis worker
(``farmeye worker``) and the hub, prints one line with the ingest and HTTP
addresses once all of them answer, and writes ``DATA_DIR/run.json`` so that
other commands on this machine find them. ``--demo`` adds a demo farm, coop,
camera and user and a simulated camera. Ctrl-C or SIGTERM stops the worker,
the hub, Redis and PostgreSQL, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from farmeye.commands.db import config_option

if TYPE_CHECKING:
    from farmeye.config import Settings
    from hub.server import Hub

logger = logging.getLogger(__name__)

WORKER_START_TIMEOUT_S = 300.0
"""Longest wait for the worker to load its model before `up` goes on without it."""

WORKER_READY_PREFIX = "ready"
"""How `farmeye worker` starts the line saying it takes tasks."""

WORKER_STOP_TIMEOUT_S = 120.0
"""Time the worker has to finish its batch on stop before it is killed."""

LOCAL_ADMIN = "local-admin"
"""User whose token run.json holds; the hub of `up` lets it see every farm."""

DEMO_FARM, DEMO_COOP, DEMO_CAMERA, DEMO_USER = "demo", "coop-1", "demo-camera", "demo"

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Prepared:
    """What the database setup produced for the running system."""

    database_url: str
    redis_url: str
    admin_id: int
    admin_token: str
    demo: DemoSetup | None = None


@dataclass(frozen=True)
class DemoSetup:
    device_id: str
    secret: str
    user_token: str


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for photos, embedded servers and run.json (default ~/.farmeye).",
)
@click.option(
    "--demo",
    is_flag=True,
    help="Also create a demo farm, camera and user, and run a simulated camera.",
)
@config_option
def up(data_dir: Path | None, demo: bool, config_file: Path | None) -> None:
    """Start PostgreSQL, Redis, a worker and the hub on this machine."""
    from farmeye.config import ConfigError, load_settings

    try:
        settings = load_settings(config_file, data_dir=data_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            prepared = _prepare(settings, demo, stack)
            worker = WorkerProcess(settings, prepared)
            stack.callback(worker.stop)
            worker.start()
            asyncio.run(_run(settings, prepared, worker))
    except KeyboardInterrupt:
        logger.info("stopped")
    except click.ClickException:
        raise
    except Exception as exc:
        raise click.ClickException(_explain(exc)) from exc


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside the event loop stops start-up like Ctrl-C does."""
    raise KeyboardInterrupt


def _explain(exc: Exception) -> str:
    from farmeye.db import DatabaseError
    from farmeye.embedded import EmbeddedServerError

    if isinstance(exc, EmbeddedServerError | DatabaseError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return (
            f"{exc.strerror}: another program uses the hub's port; set "
            "FARMEYE_INGEST_PORT / FARMEYE_HTTP_PORT or stop it"
        )
    return f"{type(exc).__name__}: {exc}"


def _prepare(settings: Settings, demo: bool, stack: contextlib.ExitStack) -> Prepared:
    """Servers up, schema current, local admin and demo entities in place."""
    from farmeye import db
    from farmeye.config import read_run_info

    running = read_run_info(settings.data_dir)
    if running is not None:
        raise click.ClickException(
            f"`farmeye up` already runs for {settings.data_dir} (pid "
            f"{running.get('pid')}); stop it first or use another --data-dir"
        )
    database_url, redis_url = _servers(settings, stack)
    db.migrate(database_url)
    connection = db.connect(database_url)
    try:
        admin_id, admin_token = _local_admin(connection)
        demo_setup = _demo_entities(connection) if demo else None
    finally:
        connection.close()
    return Prepared(database_url, redis_url, admin_id, admin_token, demo_setup)


def _servers(settings: Settings, stack: contextlib.ExitStack) -> tuple[str, str]:
    """Configured URLs, with embedded servers standing in for missing ones."""
    if settings.database_url and settings.redis_url:
        return settings.database_url, settings.redis_url
    from farmeye.embedded import EmbeddedServices

    click.echo(f"starting PostgreSQL and Redis in {settings.data_dir} ...", err=True)
    # Redis keeps an append-only file, so queued analyses survive its restart.
    services = EmbeddedServices(settings.data_dir, appendonly=True)
    services.start()
    stack.callback(services.stop)
    return (
        settings.database_url or services.database_url,
        settings.redis_url or services.redis_url,
    )


def _local_admin(connection: Any) -> tuple[int, str]:
    from hub.repository import ensure_local_admin

    with connection:
        return ensure_local_admin(connection, LOCAL_ADMIN)


def _demo_entities(connection: Any) -> DemoSetup:
    """The demo farm, coop, camera (a fresh secret each run) and user."""
    from farmeye import db

    existing = [
        device
        for device in db.list_devices(connection, farm=DEMO_FARM)
        if device.name == DEMO_CAMERA and device.revoked_at is None
    ]
    if existing:
        device_id = existing[0].id
        secret = db.rotate_device_secret(connection, device_id)
    else:
        new = db.add_device(connection, DEMO_CAMERA, DEMO_COOP, DEMO_FARM)
        device_id, secret = new.device_id, new.secret
    user = db.add_user(connection, DEMO_USER, DEMO_FARM, "manager")
    return DemoSetup(device_id, secret, user.token)


class WorkerProcess:
    """`farmeye worker` as a child: ready once it announces ``ready: ...``.

    Celery's start-up banner goes to the same output, so only the
    supervisor's own announcement counts.
    """

    def __init__(self, settings: Settings, prepared: Prepared) -> None:
        self.settings = settings
        self.prepared = prepared
        self.log_path = Path(settings.data_dir) / "logs" / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            FARMEYE_DATABASE_URL=self.prepared.database_url,
            FARMEYE_REDIS_URL=self.prepared.redis_url,
            FARMEYE_DATA_DIR=str(self.settings.data_dir),
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter
                [sys.executable, "-m", "farmeye.cli", "worker"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
                preexec_fn=_parent_death_hook(),
            )
        threading.Thread(target=self._watch_output, daemon=True).start()

    def _watch_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None  # noqa: S101
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith(WORKER_READY_PREFIX):
                logger.info("worker: %s", line)
                self.ready.set()
            else:
                logger.debug("worker: %s", line)

    async def wait_ready(self, timeout_s: float = WORKER_START_TIMEOUT_S) -> bool:
        """True once the worker takes tasks; False if it died or is too slow."""
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + timeout_s
        while not self.ready.is_set():
            if self.process is None or self.process.poll() is not None:
                return False
            if loop.time() > deadline_s:
                return False
            await asyncio.sleep(0.2)
        return True

    def stop(self) -> None:
        """Warm shutdown: the worker finishes and stores its batch first."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning(
                "worker did not stop in %.0f s; killing it", WORKER_STOP_TIMEOUT_S
            )
            process.kill()
            process.wait()


def _parent_death_hook() -> Callable[[], object] | None:
    """On Linux, the worker gets SIGTERM if `up` itself is killed."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return functools.partial(libc.prctl, PR_SET_PDEATHSIG, signal.SIGTERM)


async def _run(settings: Settings, prepared: Prepared, worker: WorkerProcess) -> None:
    """Start the hub, announce, serve until a signal, stop worker then hub."""
    from farmeye.config import remove_run_info, write_run_info
    from hub.server import Hub

    hub = Hub(
        settings,
        prepared.database_url,
        prepared.redis_url,
        admin_user_ids=frozenset({prepared.admin_id}),
    )
    await hub.start()
    camera: asyncio.Task[None] | None = None
    try:
        if not await worker.wait_ready():
            click.echo(
                f"warning: the analysis worker is not running (see {worker.log_path}); "
                "photos get triage verdicts and wait in the queue for analysis",
                err=True,
            )
        info = _run_info(hub, prepared)
        write_run_info(settings.data_dir, info)
        click.echo(f"farmeye up: ingest {info['ingest']} http {info['http']}")
        if prepared.demo is not None:
            camera = _start_demo(hub, prepared.demo, info)
        await _wait_for_signal()
    finally:
        if camera is not None:
            camera.cancel()
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
        await hub.stop()
        remove_run_info(settings.data_dir)


def _run_info(hub: Hub, prepared: Prepared) -> dict[str, Any]:
    assert hub.ingest_address and hub.http_address  # noqa: S101
    ingest = _local(hub.ingest_address)
    return {
        "database_url": prepared.database_url,
        "redis_url": prepared.redis_url,
        "ingest": ingest,
        "http": f"http://{_local(hub.http_address)}",
        "token": prepared.admin_token,
    }


def _local(address: tuple[str, int]) -> str:
    """``host:port`` to reach a listener from this machine."""
    host, port = address
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - rewriting, not binding
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _start_demo(hub: Hub, demo: DemoSetup, info: dict[str, Any]) -> asyncio.Task[None]:
    from farmeye.auth import DeviceCredentials
    from farmeye.device_client import parse_address
    from hub.demo import DemoCamera

    click.echo(f"demo: dashboard {info['http']}/?token={demo.user_token}")
    click.echo(f"demo: user token {demo.user_token}")
    click.echo(f"demo: camera {demo.device_id} uploads a drawn photo every few seconds")
    credentials = DeviceCredentials(demo.device_id, demo.secret)
    camera = DemoCamera(credentials, parse_address(info["ingest"]))
    return asyncio.create_task(camera.run(), name="demo-camera")


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        signal.signal(signal.SIGTERM, _interrupt)
