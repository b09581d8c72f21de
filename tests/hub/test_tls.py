"""TLS on the ingest port, switched on by tls_cert and tls_key."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.hub.support import add_camera, client_for, hub_settings, photo, running_hub


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl tool."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl tool is needed to make a test certificate")
    cert, key = folder / "hub.crt", folder / "hub.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_ingest_accepts_trusting_cameras_only(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """A camera that trusts the hub's certificate uploads; a plain one is refused."""
    cert, key = self_signed(tmp_path)
    camera = add_camera(db_url)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> tuple[int, BaseException]:
        settings = hub_settings(tmp_path / "hub", tls_cert=cert, tls_key=key)
        async with running_hub(settings, db_url, redis_db_url) as hub:
            async with client_for(hub, camera, ssl_context=trusting) as client:
                capture_id = (await client.upload(photo(1))).capture_id
            plain = client_for(hub, camera, timeout_s=5)
            with pytest.raises(Exception) as refused:
                await plain.connect()
            return capture_id, refused.value

    capture_id, refused = asyncio.run(scenario())
    assert capture_id >= 1
    assert isinstance(refused, ConnectionError)
