"""The embedded PostgreSQL and Redis: start, answer, crash, restart, stop."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import pytest
import redis

from farmeye import embedded
from farmeye.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    EmbeddedServices,
)


def query(url: str, sql: str) -> Any:
    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone() if cursor.description else None
    finally:
        connection.close()


@pytest.fixture
def postgres(tmp_path: Path) -> Any:
    server = EmbeddedPostgres(tmp_path / "postgres", fsync=False)
    server.start()
    yield server
    server.stop()


def test_services_answer_on_local_ports(embedded_services: EmbeddedServices) -> None:
    """Both servers answer on 127.0.0.1 with the URLs they publish."""
    assert query(embedded_services.database_url, "SELECT current_database()") == (
        "farmeye",
    )
    assert redis.Redis.from_url(embedded_services.redis_url).ping()
    assert "@127.0.0.1:" in embedded_services.database_url
    assert "@127.0.0.1:" in embedded_services.redis_url


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs another account")
def test_postgres_runs_as_dedicated_user_when_root(postgres: EmbeddedPostgres) -> None:
    """As root, PostgreSQL runs as the farmeye-pg system account."""
    account = pwd.getpwnam(embedded.PG_SYSTEM_USER)
    assert postgres.pid is not None
    assert psutil.Process(postgres.pid).uids().real == account.pw_uid
    assert postgres.pgdata.stat().st_uid == account.pw_uid


def test_redis_needs_its_password(embedded_services: EmbeddedServices) -> None:
    """A client without the password is refused, even on 127.0.0.1."""
    client = redis.Redis(host="127.0.0.1", port=embedded_services.redis.port)
    with pytest.raises(redis.AuthenticationError):
        client.ping()


def test_sigkill_then_start_recovers_stale_pid_file(postgres: EmbeddedPostgres) -> None:
    """After SIGKILL the stale postmaster.pid is cleared and data survives."""
    query(
        postgres.database_url, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)"
    )
    port, pid = postgres.port, postgres.pid
    assert pid is not None

    os.kill(pid, signal.SIGKILL)
    while postgres.running:
        time.sleep(0.05)
    assert (postgres.pgdata / "postmaster.pid").exists()
    postgres.start()

    assert postgres.port == port
    assert query(postgres.database_url, "SELECT n FROM kept") == (7,)


def test_pid_file_of_unrelated_process_is_removed(postgres: EmbeddedPostgres) -> None:
    """A postmaster.pid naming a live pid that is not our server is stale."""
    postgres.stop()
    pid_file = postgres.pgdata / "postmaster.pid"
    pid_file.write_text(f"{os.getpid()}\n{postgres.pgdata}\n", encoding="ascii")

    postgres.start()

    assert query(postgres.database_url, "SELECT 1") == (1,)


def test_restart_keeps_port_and_data_and_clients_reconnect(
    postgres: EmbeddedPostgres,
) -> None:
    """A restart drops open sessions; new ones reach the same data."""
    query(postgres.database_url, "CREATE TABLE kept (n int)")
    client = psycopg2.connect(postgres.database_url)
    port = postgres.port

    postgres.restart()

    with pytest.raises(psycopg2.OperationalError), client.cursor() as cursor:
        cursor.execute("SELECT 1")
    client.close()
    assert postgres.port == port
    assert query(postgres.database_url, "SELECT count(*) FROM kept") == (0,)


def test_redis_without_appendonly_forgets_on_restart(tmp_path: Path) -> None:
    """By default Redis keeps nothing on disk."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        redis.Redis.from_url(server.redis_url).rpush("queue", "task")
        server.restart()
        assert redis.Redis.from_url(server.redis_url).llen("queue") == 0
        assert not list((tmp_path / "redis").glob("*.rdb"))
    finally:
        server.stop()


def test_redis_with_appendonly_keeps_queued_tasks(tmp_path: Path) -> None:
    """appendonly=True keeps a queue across a restart on the same port."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        redis.Redis.from_url(server.redis_url).rpush("queue", "t1", "t2")
        port = server.port
        server.restart()
        assert server.port == port
        assert redis.Redis.from_url(server.redis_url).lrange("queue", 0, -1) == [
            b"t1",
            b"t2",
        ]
    finally:
        server.stop()


def test_second_owner_of_data_dir_is_refused(
    embedded_services: EmbeddedServices,
) -> None:
    """Two processes never run the servers of one data folder."""
    rival = EmbeddedServices(embedded_services.data_dir, fsync=False)
    with pytest.raises(EmbeddedServerError, match="another FarmEye process"):
        rival.start()
    assert query(embedded_services.database_url, "SELECT 1") == (1,)


def test_orphans_of_a_killed_owner_are_replaced(tmp_path: Path) -> None:
    """Servers left by a SIGKILLed farmeye up are stopped and started anew."""
    data_dir = tmp_path / "farmeye"
    script = textwrap.dedent(
        f"""
        import os, signal
        from farmeye.embedded import EmbeddedServices
        services = EmbeddedServices({str(data_dir)!r}, fsync=False).start()
        print(services.postgres.pid, services.redis.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    orphan_pids = [int(pid) for pid in result.stdout.split()]
    assert len(orphan_pids) == 2, result.stderr

    with EmbeddedServices(data_dir, fsync=False) as services:
        assert query(services.database_url, "SELECT 1") == (1,)
        assert redis.Redis.from_url(services.redis_url).ping()
        assert services.postgres.pid not in orphan_pids
    for pid in orphan_pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_managed_processes_stop_before_servers(
    embedded_services: EmbeddedServices,
) -> None:
    """stop() ends managed workers first, then Redis, then PostgreSQL."""
    order: list[str] = []
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    embedded_services.manage("worker", worker)
    for server in (embedded_services.redis, embedded_services.postgres):
        original = server.stop

        def stop(original: Any = original, name: str = server.name) -> None:
            order.append(f"{name} (worker running: {worker.poll() is None})")
            original()

        server.stop = stop  # type: ignore[method-assign]

    embedded_services.stop()

    assert worker.poll() is not None
    assert order == [
        "Redis (worker running: False)",
        "PostgreSQL (worker running: False)",
    ]


def test_pinned_port_in_use_is_explained(tmp_path: Path) -> None:
    """A taken port that was asked for gives an error naming it."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = EmbeddedRedis(tmp_path / "redis", port=port, start_timeout_s=10)
        with pytest.raises(EmbeddedServerError, match=f"127.0.0.1:{port}"):
            server.start()
    assert not server.running


def test_startup_failure_quotes_the_log(tmp_path: Path) -> None:
    """A server that dies while starting raises with its last log lines."""
    server = EmbeddedRedis(tmp_path / "redis", databases=0, start_timeout_s=10)
    with pytest.raises(EmbeddedServerError, match="exited with status") as caught:
        server.start()
    assert "databases" in str(caught.value).lower()


def test_restart_never_moves_to_another_port(tmp_path: Path) -> None:
    """A taken port fails restart instead of moving; once free it is reused."""
    server = EmbeddedRedis(tmp_path / "redis", start_timeout_s=10)
    server.start()
    port = server.port
    server.stop()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with pytest.raises(EmbeddedServerError, match=f"127.0.0.1:{port}"):
            server.restart()
    server.start()
    try:
        assert server.port == port
    finally:
        server.stop()


def test_die_with_parent_ends_servers_of_a_killed_session(tmp_path: Path) -> None:
    """Servers started with die_with_parent stop when their parent is killed."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from farmeye.embedded import EmbeddedServices
        services = EmbeddedServices(
            {str(tmp_path / "farmeye")!r}, fsync=False, die_with_parent=True
        ).start()
        print(services.postgres.pid, services.redis.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) == 2, result.stderr

    _, alive = psutil.wait_procs(
        [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=30
    )
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
