"""The systemd unit keeps its promises: restarts, hardening, writable spool."""

from __future__ import annotations

import configparser
import os
import socket
from pathlib import Path

import pytest

from edge_agent import systemd

UNIT = Path(__file__).resolve().parents[2] / "deploy/systemd/farmeye-agent.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_restarts_always_and_runs_the_agent_command() -> None:
    """Restart=always with a pause, as user farmeye, on the agent command."""
    service = unit()["Service"]
    assert service["Restart"] == "always" and int(service["RestartSec"]) > 0
    assert service["User"] == "farmeye"
    assert service["ExecStart"].split()[1:3] == ["agent", "--config"]
    assert unit()["Unit"]["StartLimitIntervalSec"] == "0"


def test_unit_is_hardened_and_leaves_only_the_spool_writable() -> None:
    """ProtectSystem=strict, NoNewPrivileges, and the state folder writable."""
    service = unit()["Service"]
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["StateDirectory"] == "farmeye-agent"
    assert service["ReadWritePaths"] == "/var/lib/farmeye-agent"


def test_systemd_notifications_reach_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY=1 arrives on $NOTIFY_SOCKET; without it notify() is a no-op."""
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert systemd.notify("READY=1")
        assert listener.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.notify("READY=1")


def test_watchdog_interval_is_half_the_units_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """WatchdogSec=120 gives a ping every 60 s; none when unset."""
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval_s() == 60.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert systemd.watchdog_interval_s() is None
