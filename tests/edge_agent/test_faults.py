"""Faults against a real hub process: crashes, outages, corruption, refusal."""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.spool import Spool
from farmeye import db
from tests.edge_agent.support import (
    AgentProcess,
    Camera,
    HubProcess,
    agent_config,
    capture_hashes,
    photo,
    sql,
    wait_until,
    write_photos,
)
from tests.hub.support import add_user

PHOTOS = 1000
KILLS = 20
STARTED = "INFO edge_agent.agent: agent for device"


def spool_of(tmp_path: Path, name: str = "agent") -> Path:
    return tmp_path / f"{name}-state" / "spool"


def spool_entries(tmp_path: Path) -> list[Path]:
    folder = spool_of(tmp_path) / "entries"
    if not folder.exists():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix == ".jpg")


def folder_agent(
    tmp_path: Path,
    camera: Camera,
    hub: HubProcess,
    interval_s: float = 0.005,
    **sections: Any,
) -> AgentProcess:
    """An agent taking photos from tmp_path/inbox every ``interval_s``."""
    config = agent_config(
        tmp_path,
        camera,
        hub.address,
        camera_config={"type": "folder", "path": str(tmp_path / "inbox"),
                       "min_age_s": 0},
        schedule={"interval_s": interval_s},
        uploader={"window": 8, "backoff_initial_s": 0.05, "backoff_max_s": 0.5},
        log_level="INFO",
        **sections,
    )  # fmt: skip
    return AgentProcess(config, tmp_path / "agent.log")


def test_every_photo_arrives_exactly_once_through_kills_and_hub_restarts(
    tmp_path: Path, hub_process: HubProcess, camera: Camera, db_url: str
) -> None:
    """1000 captures, agent SIGKILLed at random, hub restarted twice: 1000 rows."""
    rng = random.Random(20260501)
    inbox = tmp_path / "inbox"
    expected = write_photos(inbox, PHOTOS)
    agent = folder_agent(tmp_path, camera, hub_process, interval_s=0.01)
    hub_restarts = {6: signal.SIGTERM, 13: signal.SIGKILL}

    # Each kill lands at a random moment after start-up, while the agent
    # captures, spools and uploads; the lives add up to about 1000 captures.
    for kill in range(KILLS):
        started = agent.log().count(STARTED)
        agent.start()
        wait_until(lambda n=started: agent.log().count(STARTED) > n, 60, 0.02)
        time.sleep(rng.uniform(0.05, 1.0))
        if kill in hub_restarts:
            hub_process.stop(hub_restarts[kill])
            hub_process.start()
            time.sleep(rng.uniform(0.1, 0.8))
        agent.kill()

    # A photo spooled just before a kill may still be in the inbox: it is
    # taken again, and the hub must answer it as a duplicate.
    agent.start()
    try:
        wait_until(
            lambda: (
                len(capture_hashes(db_url, camera.device_id)) >= PHOTOS
                and not list(inbox.glob("*.jpg"))
                and not spool_entries(tmp_path)
            ),
            180,
        )
    finally:
        agent.stop()

    rows = sql(
        db_url,
        "SELECT count(*), count(DISTINCT sha256) FROM captures WHERE device_id = %s",
        camera.device_id,
    )
    assert rows == [(PHOTOS, PHOTOS)]
    assert set(capture_hashes(db_url, camera.device_id)) == expected
    assert not list((spool_of(tmp_path) / "quarantine").iterdir())
    agent.assert_no_traceback()


def device_health(hub: HubProcess, token: str, device_id: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.http_port}/api/devices",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        devices = json.load(response)["devices"]
    [device] = [d for d in devices if d["id"] == device_id]
    return device.get("health")


def test_long_outage_fills_spool_drops_oldest_then_drains(
    tmp_path: Path, db_url: str, redis_db_url: str, camera: Camera
) -> None:
    """Hub away: quota holds, oldest photos dropped, agent lives, drains on return."""
    hub = HubProcess(tmp_path, db_url, redis_db_url)
    photos = write_photos(tmp_path / "inbox", 200)
    by_name = sorted(
        (hashlib.sha256(path.read_bytes()).hexdigest(), path.name)
        for path in (tmp_path / "inbox").iterdir()
    )
    quota_bytes = 20_000
    agent = folder_agent(tmp_path, camera, hub, spool={"quota_bytes": quota_bytes})
    agent.start()
    try:
        wait_until(lambda: not list((tmp_path / "inbox").glob("*.jpg")), 120)
        wait_until(lambda: agent.log().count("hub 127.0.0.1") >= 5)
        assert agent.running
        kept = spool_entries(tmp_path)
        assert sum(path.stat().st_size for path in kept) <= quota_bytes
        dropped = re.findall(r"dropped unsent photo ([0-9]{12})", agent.log())
        assert [int(seq) for seq in dropped] == list(range(1, len(dropped) + 1))
        assert len(dropped) + len(kept) == len(photos)
        newest = {path.name.split("-")[2].removesuffix(".jpg") for path in kept}

        hub.start()
        wait_until(lambda: not spool_entries(tmp_path), 120)
        token = add_user(db_url, "manager", "farm-a")
        health = wait_until(lambda: device_health(hub, token, camera.device_id))
        wait_until(
            lambda: device_health(hub, token, camera.device_id)["spool_depth"] == 0
        )
        health = device_health(hub, token, camera.device_id)
    finally:
        agent.stop()
        hub.stop()

    assert set(capture_hashes(db_url, camera.device_id)) == newest
    newest_written = {sha for sha, name in by_name if sha in newest}
    assert newest_written == newest
    assert health["dropped_captures"] == len(dropped)
    agent.assert_no_traceback()


def test_corrupt_spool_entry_is_set_aside_and_the_rest_arrive(
    tmp_path: Path, hub_process: HubProcess, camera: Camera, db_url: str
) -> None:
    """A torn entry goes to quarantine with a WARNING; the others reach the hub."""
    spool = Spool(spool_of(tmp_path), 10_000_000)
    spool.open()
    entries = [spool.put(photo(seed), datetime.now(UTC)) for seed in range(5)]
    bad = entries[2]
    assert bad is not None
    bad.path.write_bytes(bad.path.read_bytes()[:-200])
    (tmp_path / "inbox").mkdir()

    agent = folder_agent(tmp_path, camera, hub_process)
    agent.start()
    try:
        wait_until(lambda: len(capture_hashes(db_url, camera.device_id)) == 4)
        wait_until(lambda: not spool_entries(tmp_path))
    finally:
        agent.stop()

    good = {entry.sha256 for entry in entries if entry is not bad and entry}
    assert set(capture_hashes(db_url, camera.device_id)) == good
    assert (spool_of(tmp_path) / "quarantine" / bad.name).exists()
    assert re.search(
        rf"WARNING edge_agent.spool: moving spool file {bad.name} .*sha256", agent.log()
    )
    agent.assert_no_traceback()


def refused_agent(
    tmp_path: Path, camera: Camera, hub: HubProcess, secret: str
) -> AgentProcess:
    config = agent_config(
        tmp_path,
        Camera(camera.device_id, secret, camera.farm_id, camera.coop_id),
        hub.address,
        uploader={"auth_retry_s": 1.0, "backoff_initial_s": 0.01},
        schedule={"interval_s": 3600},
    )
    return AgentProcess(config, tmp_path / "agent.log")


def assert_refused_without_busy_loop(agent: AgentProcess) -> None:
    """Clear ERROR lines and about one attempt per refusal wait, not thousands."""
    refused = "ERROR edge_agent.uploader: hub 127.0.0.1"
    wait_until(lambda: agent.log().count(refused) >= 2, 60)
    time.sleep(3.0)
    log = agent.log()
    attempts = log.count("INFO edge_agent.uploader: connecting to hub")
    refusals = log.count(refused)
    assert attempts <= refusals + 1
    # auth_retry_s of 1 waits at least 0.5 s: 3 s allow a handful more.
    assert refusals <= 2 + 8
    assert "check device_id and the secret" in log
    assert agent.running
    agent.assert_no_traceback()


def test_wrong_secret_is_a_clear_error_with_backoff(
    tmp_path: Path, hub_process: HubProcess, camera: Camera
) -> None:
    """A wrong secret logs ERROR with what to fix and retries slowly."""
    agent = refused_agent(tmp_path, camera, hub_process, "not-the-secret")
    agent.start()
    try:
        assert_refused_without_busy_loop(agent)
    finally:
        agent.stop()
    assert "auth_failed" in agent.log()


def test_revoked_device_is_a_clear_error_with_backoff(
    tmp_path: Path, hub_process: HubProcess, camera: Camera, db_url: str
) -> None:
    """A revoked device logs ERROR and does not hammer the hub."""
    connection = db.connect(db_url)
    try:
        db.revoke_device(connection, camera.device_id)
    finally:
        connection.close()
    agent = refused_agent(tmp_path, camera, hub_process, camera.secret)
    agent.start()
    try:
        assert_refused_without_busy_loop(agent)
    finally:
        agent.stop()
