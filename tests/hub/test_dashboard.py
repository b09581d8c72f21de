"""The dashboard in a headless Chromium against a real hub: live captures,
the sign-in form, and a reconnect that resumes with ``since=``.

Needs Debian's ``chromium`` package and the ``playwright`` package of the
``test`` extra; without either the tests skip, saying which is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

from hub.server import Hub
from tests.hub.support import (
    Camera,
    add_camera,
    add_user,
    client_for,
    event_stream,
    http_of,
    hub_settings,
    next_event,
    photo,
    running_hub,
    sql,
    wait_for,
)

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page

async_api = pytest.importorskip(
    "playwright.async_api",
    reason="the dashboard tests need playwright: pip install -e '.[test]'",
)
expect = async_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"the dashboard tests need Debian's chromium package at {CHROMIUM}",
)

WAIT_MS = 60_000
"""How long a condition on the page may take on a slow, busy machine."""

RECONNECT_WAIT_MS = 120_000
"""The dashboard backs off up to 30 s between reconnect attempts."""

T = TypeVar("T")


@contextlib.asynccontextmanager
async def dashboard(hub: Hub, token: str) -> AsyncIterator[Page]:
    """The page of ``hub`` opened with ``?token=`` in a fresh browser profile.

    Any uncaught JavaScript error or unhandled rejection fails the test.
    """
    errors: list[str] = []
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{http_of(hub)}/?token={token}")
            yield page
        finally:
            await browser.close()
    assert not errors, f"JavaScript errors on the dashboard: {errors}"


def card(page: Page, capture_id: int) -> Locator:
    return page.locator(f"#capture-{capture_id}")


def event_lines(page: Page, kind: str, capture_id: int) -> Locator:
    """The lines of the event list for ``kind`` events of one capture."""
    line = re.compile(rf"^\S+ {kind}\b.* capture {capture_id} ")
    return page.locator("#events li").filter(has_text=line)


def verdict(label: str) -> re.Pattern[str]:
    """A card's triage line: the label and its score in percent."""
    return re.compile(rf"triage: {label} \d+%")


async def send_photo(hub: Hub, camera: Camera, seed: int) -> int:
    """Upload one photo from ``camera``; its capture id."""
    async with client_for(hub, camera) as client:
        return (await client.upload(photo(seed))).capture_id


async def triage_label(db_url: str, capture_id: int) -> str:
    """The triage verdict of a capture, once the hub has stored it."""
    query = "SELECT label FROM triage_results WHERE capture_id = %s"
    await wait_for(lambda: bool(sql(db_url, query, capture_id)))
    return str(sql(db_url, query, capture_id)[0][0])


async def with_http_down(hub: Hub, while_down: Awaitable[T]) -> T:
    """Close every event stream and the HTTP port, await ``while_down``, then
    listen on the same port again; camera ingest stays up throughout."""
    assert hub.http_address is not None
    host, port = hub.http_address
    hub.stream.close_all()
    await hub.http.close()
    try:
        return await while_down
    finally:
        await hub.http.start(host, port)


def test_a_photo_appears_live_with_its_triage_verdict(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """A device's photo shows up as a card with its verdict through the event
    stream, without a reload, and the event list shows its events."""
    camera = add_camera(db_url)
    token = add_user(db_url, "ann", "farm-a")

    async def scenario() -> None:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with dashboard(hub, token) as page:
                await expect(page.locator("#status")).to_have_text(
                    "live", timeout=WAIT_MS
                )
                await page.evaluate("window.notReloaded = true")
                async with event_stream(hub, token) as stream:
                    capture_id = await send_photo(hub, camera, 1)
                    triage = await next_event(stream, "triage", capture_id=capture_id)

                await expect(card(page, capture_id)).to_contain_text(
                    verdict(triage["label"]), timeout=WAIT_MS
                )
                assert await page.evaluate("window.notReloaded") is True
                await expect(event_lines(page, "capture", capture_id)).to_have_count(1)
                await expect(
                    event_lines(page, f"triage {triage['label']}", capture_id)
                ).to_have_count(1)
                thumbnail = card(page, capture_id).locator("img")
                await expect(thumbnail).to_have_js_property("complete", True)
                assert await thumbnail.evaluate("image => image.naturalWidth") > 0
                await expect(page.locator("#login")).to_be_hidden()

    asyncio.run(scenario())


def test_a_refused_token_brings_up_the_sign_in_form(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """An unknown token shows the sign-in form; a good token typed there opens
    the live dashboard."""
    token = add_user(db_url, "ann", "farm-a")

    async def scenario() -> None:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with dashboard(hub, "fet_" + "0" * 43) as page:
                login = page.locator("#login")
                await expect(login).to_be_visible(timeout=WAIT_MS)
                await expect(page.locator("#status")).to_contain_text("token refused")

                await page.locator("#token").fill(token)
                await page.locator("#token-form button").click()
                await expect(page.locator("#status")).to_have_text(
                    "live", timeout=WAIT_MS
                )
                await expect(login).to_be_hidden()

    asyncio.run(scenario())


def test_a_reconnect_shows_what_was_missed_exactly_once(
    tmp_path: Path, db_url: str, redis_db_url: str
) -> None:
    """With the stream down a photo arrives; once the dashboard is back (by its
    own reconnect, with since=) it shows that photo and its events once, none
    of the earlier ones twice, and goes on live."""
    camera = add_camera(db_url)
    token = add_user(db_url, "ann", "farm-a")

    async def photo_missed_by(page: Page, hub: Hub) -> int:
        await expect(page.locator("#status")).to_contain_text(
            "reconnecting", timeout=WAIT_MS
        )
        capture_id = await send_photo(hub, camera, 2)
        await triage_label(db_url, capture_id)
        return capture_id

    async def scenario() -> None:
        async with running_hub(hub_settings(tmp_path), db_url, redis_db_url) as hub:
            async with dashboard(hub, token) as page:
                status = page.locator("#status")
                await expect(status).to_have_text("live", timeout=WAIT_MS)
                seen = await send_photo(hub, camera, 1)
                await expect(card(page, seen)).to_contain_text(
                    verdict(await triage_label(db_url, seen)), timeout=WAIT_MS
                )

                missed = await with_http_down(hub, photo_missed_by(page, hub))
                await expect(status).to_have_text("live", timeout=RECONNECT_WAIT_MS)
                label = await triage_label(db_url, missed)
                await expect(card(page, missed)).to_contain_text(
                    verdict(label), timeout=WAIT_MS
                )

                # Live events come after the replay on the same socket: once
                # this one shows, every replayed event has been shown.
                later = await send_photo(hub, camera, 3)
                await expect(card(page, later)).to_contain_text(
                    verdict(await triage_label(db_url, later)), timeout=WAIT_MS
                )
                for capture_id in (seen, missed, later):
                    await expect(
                        page.locator(".capture").filter(has_text=f"#{capture_id} ·")
                    ).to_have_count(1)
                    for kind in ("capture", "triage"):
                        lines = event_lines(page, kind, capture_id)
                        await expect(lines).to_have_count(1)

    asyncio.run(scenario())
