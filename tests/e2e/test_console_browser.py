"""The operator console in a real browser: Debian's Chromium, driven by Playwright, against the
four services as separate processes on real NATS and PostgreSQL. A user signs in; a message
posted to the API appears in the inbox within a second without a reload, and the AI's reply
after it; the agent takes over and replies through dispatch; a received photo shows inline and
an email attachment is a download link; a held and a deferred send say why (and when) in the
thread; a lead is dragged to another stage, then moved with the keyboard only, and the events
are found; a dead letter is replayed after a confirmation; another company's data is refused.
Each page's screenshot goes to docs/console/ (shown in docs/console.md), so the pictures stay
current; CONSOLE_SCREENSHOTS_DIR sends them elsewhere."""

from __future__ import annotations

import json
import os
import signal
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shvya_common.console_users import DEFAULT_ADMIN_EMAIL, ensure_console_admin
from shvya_common.crypto import generate_key
from shvya_common.db import create_pool
from shvya_common.storage import LocalMediaStore
from shvya_common.whatsapp.web_accounts import store_qr
from tests.keys import bearer
from tests.support import eventually

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("WHATSAPP_WEB_CHROMIUM_PATH", "/usr/bin/chromium"))
SHOTS = (
    Path(os.environ["CONSOLE_SCREENSHOTS_DIR"])
    if os.environ.get("CONSOLE_SCREENSHOTS_DIR")
    else Path(__file__).resolve().parents[2] / "docs" / "console"
)
ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a long console passphrase"
QUESTION = "What does the annual plan cost?"


@pytest.fixture
async def platform(services, tmp_path):
    """The four services, with a keyring (channel accounts), a media folder of the test's own
    and fast pacing for the test lead."""
    for name in ("ingest", "engage", "dispatch", "scheduler"):
        services.start(
            name,
            SECRETS_KEYS=f"kc1:{generate_key()}",
            EMBEDDINGS_PROVIDER="none",
            MEDIA_DIR=str(tmp_path / "media"),
        )
    for proc in list(services.procs.values()):
        await proc.wait_ready()
    return services


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, chromium_sandbox=False, args=ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


def qr_png(size: int = 29, scale: int = 6) -> bytes:
    """A QR-like black-and-white PNG (a real one comes from WhatsApp Web's page)."""
    rows = []
    for y in range(size * scale):
        line = bytearray([0])
        for x in range(size * scale):
            cx, cy = x // scale, y // scale
            finder = any(
                ox <= cx < ox + 7 and oy <= cy < oy + 7
                for ox, oy in ((0, 0), (size - 7, 0), (0, size - 7))
            )
            dark = (
                (cx * 7 + cy * 13 + cx * cy) % 3 == 0
                if not finder
                else (
                    min(cx % (size - 7) if cx >= size - 7 else cx, 6) in (0, 6)
                    or min(cy % (size - 7) if cy >= size - 7 else cy, 6) in (0, 6)
                    or (
                        2 <= (cx if cx < 7 else cx - size + 7) <= 4
                        and 2 <= (cy if cy < 7 else cy - size + 7) <= 4
                    )
                )
            )
            line.append(0 if dark else 255)
        rows.append(bytes(line))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    side = size * scale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


async def received_files(
    client: httpx.AsyncClient, h: dict[str, str], db_url: str, media_dir: Path
) -> str:
    """A lead who sent a photo on WhatsApp (stored, as dispatch's media.fetch stores it) and a
    PDF by email (as mail.file_email stores it); returns the lead's id."""
    photo, mail = [
        await client.post(
            "/inbound-message",
            json={
                "phone_number": "+4915177776666",
                "contact_name": "Photo Sender",
                "message_text": text,
                "channel": "log",
            },
            headers=h,
        )
        for text in ("[Image attached: image/png]", "[attachment] offer.pdf")
    ]
    assert photo.status_code == mail.status_code == 200, (photo.text, mail.text)
    conn = await asyncpg.connect(db_url)
    try:
        lead_id, company_id = await conn.fetchrow(
            "SELECT lead_id, company_id FROM messages WHERE id = $1",
            uuid.UUID(photo.json()["message_id"]),
        )
        store = LocalMediaStore(media_dir)
        image = await store.put(company_id, qr_png(), "image/png")
        await conn.execute(
            "INSERT INTO inbound_media (company_id, message_id, channel, media_id, kind, status,"
            " mime_type, size_bytes, sha256, storage_key) VALUES ($1, $2, 'whatsapp_cloud',"
            " 'wamid-photo', 'image', 'stored', 'image/png', $3, $4, $5)",
            company_id,
            uuid.UUID(photo.json()["message_id"]),
            image.size,
            image.sha256,
            image.key,
        )
        await conn.execute(
            "UPDATE messages SET meta = meta || jsonb_build_object('media',"
            " jsonb_build_object('kind', 'image', 'mime_type', 'image/png')) WHERE id = $1",
            uuid.UUID(photo.json()["message_id"]),
        )
        pdf = b"%PDF-1.4 " + b"0" * 8_300
        offer = await store.put(company_id, pdf, "application/pdf")
        attachment = {
            "filename": "offer.pdf",
            "mime_type": "application/pdf",
            "size": offer.size,
            "key": offer.key,
            "sha256": offer.sha256,
        }
        await conn.execute(
            "UPDATE messages SET meta = meta || jsonb_build_object('attachments', $2::jsonb)"
            " WHERE id = $1",
            uuid.UUID(mail.json()["message_id"]),
            json.dumps([attachment]),
        )
    finally:
        await conn.close()
    return str(lead_id)


async def execute(db_url: str, query: str, *args: Any) -> None:
    """Run one statement on a connection of its own."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


async def unfed(db_url: str, lead_id: str) -> int:
    """How many of the lead's events the scheduler's feed has not yet taken (and announced)."""
    conn = await asyncpg.connect(db_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM event_feed f JOIN events e ON e.id = f.event_id"
                " WHERE e.lead_id = $1",
                uuid.UUID(lead_id),
            )
        )
    finally:
        await conn.close()


async def company(client: httpx.AsyncClient, token: str, name: str, email: str) -> dict[str, str]:
    made = await client.post(
        "/v1/companies",
        json={"name": name, "settings": {"policies": {"whatsapp_cloud": {"min_gap_seconds": 1}}}},
        headers=bearer(token),
    )
    assert made.status_code == 201, made.text
    admin = made.json()["admin_key"]["key"]
    user = await client.post(
        "/v1/users",
        json={"email": email, "full_name": f"{name} admin", "role": "admin", "password": PASSWORD},
        headers=bearer(admin),
    )
    assert user.status_code == 201, user.text
    return {"id": made.json()["company"]["id"], "admin": admin, "email": email}


async def sign_in(page: Any, url: str, email: str, shot: str | None = None) -> None:
    await page.goto(f"{url}/console/")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    if shot:
        await page.screenshot(path=str(SHOTS / shot))
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("nav a[href='#/inbox']").wait_for(state="attached", timeout=10_000)


async def shoot(page: Any, name: str) -> None:
    await page.screenshot(path=str(SHOTS / name))


async def test_the_console_end_to_end_in_chromium(platform, db_url, tmp_path):
    """Sign in, watch a message arrive live, take over and reply through dispatch, see a received
    photo and an attachment, see why a send is held or deferred, drag a lead to another stage
    and move it with the keyboard and find the events, replay a dead letter, and be refused
    another company's data, in Chromium at 1280×800 (and the inbox at phone width)."""
    url = platform.url
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client, chromium() as browser:
        token = platform.base_env["ADMIN_TOKEN"]
        acme = await company(client, token, "Acme Solar", "boss@acme.example")
        beta = await company(client, token, "Beta Wind", "boss@beta.example")
        h = bearer(acme["admin"])
        other = await client.post(
            "/inbound-message",
            json={"phone_number": "+4930111222", "message_text": "Beta's secret", "channel": "log"},
            headers=bearer(beta["admin"]),
        )
        beta_lead = (await client.get("/v1/leads", headers=bearer(beta["admin"]))).json()["items"][
            0
        ]
        assert other.status_code == 200
        sequence = await client.post(
            "/v1/sequences",
            json={
                "name": "Solar follow-up",
                "channel": "whatsapp_cloud",
                "steps": [
                    {"key": "hello", "kind": "send", "text": "Hi {{ lead.first_name }}!"},
                    {"kind": "wait", "seconds": 86400},
                    {"key": "offer", "kind": "send", "text": "Our offer ends this month."},
                ],
            },
            headers=h,
        )
        assert sequence.status_code == 201, sequence.text
        account = await client.post(
            "/v1/channel-accounts",
            json={
                "channel": "whatsapp_web",
                "name": "shop phone",
            },
            headers=h,
        )
        assert account.status_code == 201, account.text
        pool = await create_pool(db_url, 1, 2)
        try:
            # What the dispatch replica linking the account stores (its profile is ca-<id>).
            await store_qr(pool, f"ca-{account.json()['id']}", "2@fake-auth-code", qr_png())
        finally:
            await pool.close()

        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        await sign_in(page, url, acme["email"], shot="signin.png")
        await page.locator("[data-live='live']").wait_for(timeout=10_000)
        await page.evaluate("window.__sameDocument = true")

        # 1. An inbound message appears in the inbox within a second, without a reload.
        posted = await client.post(
            "/inbound-message",
            json={
                "phone_number": "+4915112345678",
                "contact_name": "Ana Lopez",
                "message_text": QUESTION,
                "channel": "whatsapp_cloud",
            },
            headers=h,
        )
        assert posted.status_code == 200, posted.text
        started = time.monotonic()
        # The row shows the latest message, which may already be the AI's answer.
        row = page.locator(".convo", has_text="Ana Lopez")
        await row.wait_for(timeout=1_000)
        arrived = time.monotonic() - started
        assert arrived < 1.0, arrived
        assert await page.evaluate("window.__sameDocument === true")
        lead_id = await row.get_attribute("data-lead")
        assert lead_id

        # 2. The conversation, and the AI's reply arriving live.
        await row.click()
        await page.locator(".msg.inbound", has_text=QUESTION).wait_for(timeout=5_000)
        await page.locator(".msg.outbound").first.wait_for(timeout=15_000)

        # 3. Take over, reply, and see the reply recorded through dispatch.
        await page.get_by_role("button", name="Take over").click()
        await page.locator("[data-handoff='on']").wait_for(timeout=5_000)
        await page.get_by_label("Message").fill("Hi Ana, Rita here: the annual plan is 99 EUR.")
        await page.get_by_role("button", name="Send").click()
        sent = page.locator(".msg.outbound.agent[data-status='logged']")
        await sent.wait_for(timeout=15_000)
        await shoot(page, "inbox.png")
        thread = (await client.get(f"/v1/leads/{lead_id}/messages", headers=h)).json()["items"]
        agent = [m for m in thread if m["purpose"] == "agent"]
        assert [(m["status"], m["meta"]["by"]) for m in agent] == [
            ("logged", f"user:{acme['email']}")
        ]

        # 3b. A long conversation opens at its end; earlier messages load on request.
        long_talk = await client.post(
            "/inbound-message",
            json={
                "phone_number": "+4915199990000",
                "contact_name": "Long Talk",
                "message_text": "the latest question",
                "channel": "log",
            },
            headers=h,
        )
        assert long_talk.status_code == 200, long_talk.text
        conn = await asyncpg.connect(db_url)
        try:
            long_lead = str(
                await conn.fetchval(
                    "SELECT lead_id FROM messages WHERE id = $1",
                    uuid.UUID(long_talk.json()["message_id"]),
                )
            )
            await conn.execute(
                "INSERT INTO messages (company_id, lead_id, direction, channel, body, status,"
                " created_at) SELECT company_id, lead_id, 'inbound', 'log',"
                " 'old message ' || lpad(i::text, 3, '0'), status,"
                " now() - make_interval(mins => 300 - i)"
                " FROM messages, generate_series(0, 249) AS i WHERE lead_id = $1"
                " AND direction = 'inbound'",
                uuid.UUID(long_lead),
            )
        finally:
            await conn.close()
        await page.goto(f"{url}/console/#/inbox/{long_lead}")
        await page.locator(".msg.inbound", has_text="the latest question").wait_for(timeout=5_000)
        assert await page.locator(".msg", has_text="old message 000").count() == 0
        await page.get_by_role("button", name="Earlier messages").click()
        await page.locator(".msg", has_text="old message 000").wait_for(timeout=5_000)
        assert await page.get_by_role("button", name="Earlier messages").count() == 0
        assert await page.locator(".msg", has_text="old message").count() == 250

        # 3c. Received files: a WhatsApp image shows inline (and opens full size), an email's
        # attachment is a download link.
        photo_lead = await received_files(client, h, db_url, tmp_path / "media")
        await page.goto(f"{url}/console/#/inbox/{photo_lead}")
        thumb = page.locator(".file.image img")
        await thumb.wait_for(timeout=5_000)
        await thumb.scroll_into_view_if_needed()
        await page.wait_for_function(
            "() => { const i = document.querySelector('.file.image img');"
            " return i && i.complete && i.naturalWidth > 0; }",
            timeout=5_000,
        )
        full = await thumb.evaluate("(i) => i.closest('a').href")
        download = page.locator(".file.download a", has_text="offer.pdf")
        await download.wait_for(timeout=5_000)
        assert await download.get_attribute("download") == "offer.pdf"
        served = await page.evaluate(
            "(u) => fetch(u).then(r => [r.status, r.headers.get('content-type')])",
            await download.get_attribute("href"),
        )
        assert served == [200, "application/octet-stream"]
        assert await page.locator(".file", has_text="8.1 KB").count() == 1
        await page.locator(".convo", has_text="Photo Sender").wait_for(timeout=5_000)
        await shoot(page, "inbox-files.png")
        alone = await context.new_page()
        await alone.goto(full)
        await alone.wait_for_function(
            "() => document.images.length === 1 && document.images[0].naturalWidth > 0",
            timeout=5_000,
        )
        await alone.close()

        # 3d. A column past 100 leads shows more on request; a lead's page shows its latest
        # events even with a long history.
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute(
                "INSERT INTO leads (company_id, pipeline_id, stage_id, phone_e164, contact_name)"
                " SELECT p.company_id, p.id, s.id, '+49170' || lpad(i::text, 6, '0'), 'Bulk ' || i"
                " FROM pipelines p JOIN stages s ON s.pipeline_id = p.id AND s.name = 'Proposal',"
                " generate_series(1, 130) AS i WHERE p.company_id = $1 AND p.is_default",
                uuid.UUID(acme["id"]),
            )
            await conn.execute(
                "INSERT INTO events (company_id, lead_id, type, payload, created_at)"
                " SELECT company_id, id, 'lead.suppressed', '{}'::jsonb,"
                " now() - make_interval(days => 1, secs => i)"
                " FROM leads, generate_series(1, 210) AS i WHERE id = $1",
                uuid.UUID(long_lead),
            )
        finally:
            await conn.close()
        await page.goto(f"{url}/console/#/board")
        proposal = page.locator(".column[data-stage='Proposal']")
        await proposal.locator(".count", has_text="100+").wait_for(timeout=5_000)
        await proposal.get_by_role("button", name="Show more").click()
        await proposal.locator(".count", has_text="130").wait_for(timeout=5_000)
        assert await proposal.locator(".card").count() == 130
        assert await proposal.get_by_role("button", name="Show more").count() == 0
        # A live reload (a new lead) keeps what was opened.
        newcomer = await client.post(
            "/inbound-message",
            json={
                "phone_number": "+4915188887777",
                "contact_name": "Newcomer",
                "message_text": "hello",
                "channel": "log",
            },
            headers=h,
        )
        assert newcomer.status_code == 200, newcomer.text
        await page.locator(".card", has_text="Newcomer").wait_for(timeout=5_000)
        assert await proposal.locator(".card").count() == 130
        await page.goto(f"{url}/console/#/leads/{long_lead}")
        await page.locator(".timeline li[data-type='lead.suppressed']").first.wait_for(
            timeout=5_000
        )
        assert await page.locator(".timeline li[data-type='message.received']").count() == 1

        # 3e. A held send and a deferred one say why in the thread, and the deferral when it
        # will go: free text to a lead whose WhatsApp window closed a day ago (the company has
        # no fallback template), and an email sent outside the company's email hours (an
        # allowed hour two hours from now, in UTC), both live in the open thread.
        stale = await client.post(
            "/v1/leads", json={"contact_name": "Stale Window", "phone": "+4915166665555"}, headers=h
        )
        assert stale.status_code == 201, stale.text
        stale_id = stale.json()["id"]
        # The lead last wrote on WhatsApp 25 hours ago.
        await execute(
            db_url,
            "WITH wrote AS (UPDATE leads SET last_inbound_at = now() - interval '25 hours'"
            " WHERE id = $1 RETURNING company_id, id, last_inbound_at)"
            " INSERT INTO messages (company_id, lead_id, direction, channel, body, created_at)"
            " SELECT company_id, id, 'inbound', 'whatsapp_cloud', 'still there?',"
            " last_inbound_at FROM wrote",
            uuid.UUID(stale_id),
        )
        await page.goto(f"{url}/console/#/inbox/{stale_id}")
        await page.locator(".composer .note", has_text="24-hour window").wait_for(timeout=5_000)
        late = await client.post(
            f"/v1/leads/{stale_id}/messages", json={"text": "Still interested?"}, headers=h
        )
        assert late.status_code == 202, late.text
        held = page.locator(f".msg[data-message='{late.json()['message_id']}'][data-status='held']")
        await held.locator(
            ".note.warn", has_text="outside the 24-hour customer-service window"
        ).wait_for(timeout=15_000)
        assert "no fallback template" in await held.locator(".note.warn").inner_text()
        opens = datetime.now(UTC) + timedelta(hours=2)
        hours = f"{opens:%H:%M}-{opens + timedelta(hours=1):%H:%M}"
        quiet = await client.patch(
            "/v1/company",
            json={
                "settings": {
                    "policies": {
                        "whatsapp_cloud": {"min_gap_seconds": 1},
                        "email": {"quiet_hours": hours},
                    }
                }
            },
            headers=h,
        )
        assert quiet.status_code == 200, quiet.text
        mail = await client.post(
            "/v1/leads",
            json={"contact_name": "Late Mail", "email": "late@mail.example", "timezone": "UTC"},
            headers=h,
        )
        assert mail.status_code == 201, mail.text
        mail_id = mail.json()["id"]
        # The thread opens once lead.created's notice is out, so that no re-read but the
        # deferral's own can show it.
        await eventually(lambda: unfed(db_url, mail_id), lambda n: n == 0, timeout=10)
        await page.goto(f"{url}/console/#/inbox/{mail_id}")
        await page.get_by_label("Message").wait_for(timeout=5_000)
        await page.evaluate("window.__threadOpen = true")
        # Sent through the API, not the composer (whose own re-read could show the deferral
        # by chance): the open thread learns of it only from message.deferred's live notice.
        quote = await client.post(
            f"/v1/leads/{mail_id}/messages", json={"text": "Your quote, as promised."}, headers=h
        )
        assert quote.status_code == 202, quote.text
        note = page.locator(
            f".msg[data-message='{quote.json()['message_id']}'][data-status='scheduled'] .note"
        )
        await note.wait_for(timeout=15_000)
        assert await page.evaluate("window.__threadOpen === true")
        [scheduled] = (await client.get(f"/v1/leads/{mail_id}/messages", headers=h)).json()["items"]
        goes = await page.evaluate(
            "(at) => new Date(at).toLocaleString()", scheduled["meta"]["deferred_until"]
        )
        assert await note.inner_text() == (
            f"Deferred: quiet hours: email sends only {hours} (UTC) — goes at {goes}"
        )
        # Both are on their lead's timeline, in words.
        await page.goto(f"{url}/console/#/leads/{mail_id}")
        deferral = page.locator(".timeline li[data-type='message.deferred']")
        await deferral.wait_for(timeout=5_000)
        assert (
            f"send deferred on email: quiet hours: email sends only {hours} (UTC) — goes at {goes}"
            in await deferral.inner_text()
        )
        await page.goto(f"{url}/console/#/leads/{stale_id}")
        hold = page.locator(".timeline li[data-type='message.held']")
        await hold.wait_for(timeout=5_000)
        assert "send held on whatsapp_cloud: outside the 24-hour" in await hold.inner_text()

        # 4. Drag the lead to another stage; the event is on the lead's timeline.
        await page.goto(f"{url}/console/#/board")
        card = page.locator(f".card[data-lead='{lead_id}']")
        await card.wait_for(timeout=5_000)
        await card.drag_to(page.locator(".column[data-stage='Qualified']"))
        await page.locator(
            f".column[data-stage='Qualified'] .card[data-lead='{lead_id}']"
        ).wait_for(timeout=5_000)
        await shoot(page, "board.png")
        moved = (
            await client.get(f"/v1/events?type=lead.stage_changed&lead_id={lead_id}", headers=h)
        ).json()["items"]
        assert [(e["payload"]["to"], e["payload"]["by"]) for e in moved] == [
            ("Qualified", f"user:{acme['email']}")
        ]
        await page.goto(f"{url}/console/#/leads/{lead_id}")
        await page.locator(".timeline li[data-type='lead.stage_changed']").wait_for(timeout=5_000)
        await shoot(page, "lead.png")

        # 4b. The same move with the keyboard only: Tab from the card's link to its *Move to*
        # menu, ArrowUp picks the stage before (Contacted) and the lead moves there.
        await page.goto(f"{url}/console/#/board")
        card = page.locator(f".column[data-stage='Qualified'] .card[data-lead='{lead_id}']")
        await card.get_by_role("link").focus()
        await page.keyboard.press("Tab")
        focused = await page.evaluate("document.activeElement.getAttribute('aria-label')")
        assert focused == "Move Ana Lopez to stage"
        await page.keyboard.press("ArrowUp")
        await page.locator(
            f".column[data-stage='Contacted'] .card[data-lead='{lead_id}']"
        ).wait_for(timeout=5_000)
        assert await card.count() == 0
        moved = (
            await client.get(f"/v1/events?type=lead.stage_changed&lead_id={lead_id}", headers=h)
        ).json()["items"]
        assert sorted((e["payload"]["to"], e["payload"]["by"]) for e in moved) == [
            ("Contacted", f"user:{acme['email']}"),
            ("Qualified", f"user:{acme['email']}"),
        ]

        # 5. Replay a dead letter, after a confirmation.
        dead = uuid.uuid4()
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute(
                "INSERT INTO jobs (id, task_name, task_params, priority, status, attempts,"
                " company_id, lead_id, last_error) VALUES ($1, 'ai.summary', $2::jsonb, 90,"
                " 'dlq', 6, $3, $4, 'LLMUnavailable: the model answered 503 six times')",
                dead,
                json.dumps({"lead_id": lead_id, "reason": "api"}),
                uuid.UUID(acme["id"]),
                uuid.UUID(lead_id),
            )
            await page.goto(f"{url}/console/#/operations")
            entry = page.locator(f"tr[data-dead='{dead}']")
            await entry.wait_for(timeout=5_000)
            await shoot(page, "operations.png")
            await entry.get_by_role("button", name="Replay").click()
            dialog = page.locator("dialog.confirm")
            await dialog.wait_for(state="visible", timeout=2_000)
            await dialog.get_by_role("button", name="Replay").click()
            await page.get_by_role("status").filter(has_text="Replayed 1").wait_for(timeout=5_000)
            status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", dead)
            assert status in ("queued", "processing", "completed"), status
        finally:
            await conn.close()

        # 6. The other pages, for the documentation (each must render without an error).
        enrolled = await client.post(
            f"/v1/sequences/{sequence.json()['id']}/enrolments",
            json={"lead_id": lead_id},
            headers=h,
        )
        assert enrolled.status_code in (200, 201), enrolled.text
        await page.goto(f"{url}/console/#/automation/sequences/{sequence.json()['id']}")
        await page.locator(".steps .step").first.wait_for(timeout=5_000)
        await page.locator("td", has_text="active").first.wait_for(timeout=5_000)
        await shoot(page, "automation.png")
        await page.goto(f"{url}/console/#/settings/channels")
        await page.locator(".weblogin img").wait_for(timeout=5_000)
        await shoot(page, "channels.png")
        campaign = await client.post(
            "/v1/campaigns",
            json={
                "name": "Spring offer",
                "template": {"subject": "Spring", "text": "Hi {{ lead.first_name }}"},
            },
            headers=h,
        )
        assert campaign.status_code == 201, campaign.text
        await page.goto(f"{url}/console/#/automation/campaigns")
        await page.locator("td", has_text="Spring offer").wait_for(timeout=5_000)
        await page.goto(f"{url}/console/#/reports")
        # The reports API's funnel, drawn: the default pipeline's stages.
        await page.locator("figcaption", has_text="Funnel").first.wait_for(timeout=5_000)
        await page.locator("svg[aria-label^='Funnel'] text", has_text="Qualified").first.wait_for(
            timeout=5_000
        )
        await shoot(page, "reports.png")

        # 7. Another company's data is refused, in the page and through the session.
        refused = await page.evaluate(f"fetch('/v1/leads/{beta_lead['id']}').then(r => r.status)")
        assert refused == 404
        await page.goto(f"{url}/console/#/leads/{beta_lead['id']}")
        await page.locator(".error", has_text="404").wait_for(timeout=5_000)
        forged = await page.evaluate(
            "fetch('/v1/leads', {method: 'POST', headers: {'Content-Type': 'application/json'},"
            " body: JSON.stringify({phone: '+15550009'})}).then(r => r.status)"
        )
        assert forged == 403  # the cookie alone, without the CSRF token
        beta_context = await browser.new_context(viewport={"width": 390, "height": 844})
        beta_page = await beta_context.new_page()
        await sign_in(beta_page, url, beta["email"])
        await beta_page.locator(".convo").first.wait_for(timeout=5_000)
        assert await beta_page.locator(".convo", has_text="Ana Lopez").count() == 0
        assert await beta_page.evaluate(f"fetch('/v1/leads/{lead_id}').then(r => r.status)") == 404
        await beta_context.close()

        # 8. Phone width: the inbox and a conversation stay usable.
        phone = await browser.new_context(viewport={"width": 390, "height": 844})
        small = await phone.new_page()
        await sign_in(small, url, acme["email"])
        await small.goto(f"{url}/console/#/inbox/{lead_id}")
        await small.locator(".msg.inbound", has_text=QUESTION).wait_for(timeout=5_000)
        await shoot(small, "inbox-phone.png")
        await phone.close()
        await context.close()

        # 9. The README's first run: `make up`'s admin of the default company signs in and
        #    watches the original's anonymous curl message and the AI's reply arrive live.
        assert await ensure_console_admin(db_url, DEFAULT_ADMIN_EMAIL, PASSWORD, "Default company")
        first = await browser.new_context(viewport={"width": 1280, "height": 800})
        start = await first.new_page()
        start.on("pageerror", lambda err: errors.append(str(err)))
        await sign_in(start, url, DEFAULT_ADMIN_EMAIL)
        await start.locator("[data-live='live']").wait_for(timeout=10_000)
        original = await client.post(
            "/inbound-message",
            json={
                "phone_number": "+1234567890",
                "contact_name": "Test User",
                "message_text": "Hello",
                "channel": "whatsapp_cloud",
            },
        )
        assert original.status_code == 200, original.text
        await start.locator(".convo", has_text="Test User").wait_for(timeout=1_000)
        await start.locator(".convo", has_text="Test User").click()
        await start.locator(".msg.outbound[data-status='logged']").wait_for(timeout=15_000)
        await first.close()
        assert errors == []


async def new_company_key(client: httpx.AsyncClient, services: Any, name: str) -> str:
    """A new company, made with the operator token; its first admin key."""
    made = await client.post(
        "/v1/companies", json={"name": name}, headers=bearer(services.base_env["ADMIN_TOKEN"])
    )
    assert made.status_code == 201, made.text
    return str(made.json()["admin_key"]["key"])


async def test_a_stop_ends_open_live_streams_at_once(services):
    """An ingest stopped with a console's live stream open says `bye` on the stream and exits
    within seconds, instead of waiting for the stream to end."""
    ingest = services.start("ingest", EMBEDDINGS_PROVIDER="none")
    await ingest.wait_ready()
    async with httpx.AsyncClient(base_url=services.url, timeout=10) as client:
        key = await new_company_key(client, services, "Stop")
        async with client.stream("GET", "/v1/stream", headers=bearer(key)) as stream:
            lines = stream.aiter_lines()
            opening = [await anext(lines) for _ in range(3)]
            assert opening[0].startswith("retry:") and opening[2] == "event: hello", opening
            started = time.monotonic()
            ingest.proc.send_signal(signal.SIGTERM)
            seen = [line async for line in lines]
        assert "event: bye" in seen and '"restart"' in "".join(seen)
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
    assert ingest.proc.wait(10) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 5


async def test_a_revoked_key_ends_its_open_live_stream(services):
    """A live stream opened with an API key ends with `bye` (`revoked`) once the key is revoked,
    instead of running on for CONSOLE_STREAM_SECONDS with a dead credential."""
    ingest = services.start("ingest", EMBEDDINGS_PROVIDER="none")
    await ingest.wait_ready()
    async with httpx.AsyncClient(base_url=services.url, timeout=30) as client:
        admin = await new_company_key(client, services, "Revoke")
        agent = await client.post(
            "/v1/api-keys", json={"name": "wall screen", "role": "agent"}, headers=bearer(admin)
        )
        assert agent.status_code == 201, agent.text
        async with client.stream("GET", "/v1/stream", headers=bearer(agent.json()["key"])) as sse:
            lines = sse.aiter_lines()
            opening = [await anext(lines) for _ in range(3)]
            assert opening[2] == "event: hello", opening
            revoked = await client.delete(
                f"/v1/api-keys/{agent.json()['id']}", headers=bearer(admin)
            )
            assert revoked.status_code == 204, revoked.text
            # The stream ends by itself (the client's 30 s read timeout is the deadline).
            seen = [line async for line in lines if not line.startswith(":")]
        assert seen[-3:-1] == ["event: bye", 'data: {"reason": "revoked"}'], seen
