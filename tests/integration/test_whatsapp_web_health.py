"""The WhatsApp Web account supervisor's health probe and inactivity reminder, in real headless
Chromium against the fake WhatsApp Web and a real database: each state the probe knows (offline,
syncing, conflict, logged out, banned, connected again) is recorded with one event and metric
per change and pauses or resumes the account as promised, and a phone left unused past
WHATSAPP_WEB_INACTIVITY_REMINDER_DAYS gets one reminder per quiet spell. The supervisor is
driven tick by tick (no background loop), and the page's state is awaited before each probe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from shvya_common.whatsapp import web_accounts as db
from shvya_dispatch.channels.whatsapp_web import WaSession, WhatsAppWebChannel
from shvya_dispatch.settings import DispatchSettings
from shvya_dispatch.web_accounts import WebAccounts
from tests.integration.fake_whatsapp_web import Device, FakeWhatsAppWeb, serve
from tests.integration.test_whatsapp_web_channel import make_settings
from tests.support import eventually

pytestmark = pytest.mark.integration
ACCOUNT = "default"


async def open_session(
    supervisor: WebAccounts, channel: WhatsAppWebChannel, fake: FakeWhatsAppWeb
) -> tuple[WaSession, Device]:
    """One supervisor tick: the lease, the browser, its catch-up and first probe, all done."""
    await supervisor.tick()
    await asyncio.wait_for(asyncio.gather(*list(supervisor._tasks)), 60)
    return channel.sessions[ACCOUNT], fake.device()


@dataclass
class Web:
    fake: FakeWhatsAppWeb
    channel: WhatsAppWebChannel
    supervisor: WebAccounts
    pool: asyncpg.Pool

    async def open(self) -> tuple[WaSession, Device]:
        return await open_session(self.supervisor, self.channel, self.fake)

    async def probe_when(self, session: WaSession, state: str) -> str:
        """Probe once the page itself reports `state` (it learns changes through a long-poll)."""
        seen = await session.wait_until(lambda s: s.state()[0] == state, 20)
        assert seen.state()[0] == state, seen
        return await self.supervisor.probe(session)

    async def events(self, kind: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT payload FROM events WHERE type = $1 ORDER BY created_at", kind
        )
        return [r["payload"] for r in rows]

    async def account(self) -> db.WebAccount:
        row = await db.read_account(self.pool, ACCOUNT)
        assert row is not None
        return row


@asynccontextmanager
async def fake_page(
    db_url: str, tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[FakeWhatsAppWeb, DispatchSettings]]:
    """A fake WhatsApp Web served on loopback, and dispatch's settings pointing at it."""
    fake = FakeWhatsAppWeb()
    runner = await serve(fake)
    try:
        yield fake, make_settings(fake.url, tmp_path / "profiles", database_url=db_url, **settings)
    finally:
        await runner.cleanup()


@pytest.fixture
async def web(plat: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Web]:
    async with fake_page(db_url, tmp_path, whatsapp_web_inactivity_reminder_days=12) as (
        fake,
        settings,
    ):
        channel = WhatsAppWebChannel(settings)
        supervisor = WebAccounts(settings, plat.pool, plat.bus, channel)
        async with channel:
            try:
                yield Web(fake, channel, supervisor, plat.pool)
            finally:
                await supervisor.release_all()


def gauge(state: str) -> float | None:
    return REGISTRY.get_sample_value(
        "shvya_whatsapp_web_account_state", {"account": ACCOUNT, "state": state}
    )


def changes(state: str) -> float:
    value = REGISTRY.get_sample_value("shvya_whatsapp_web_state_changes_total", {"state": state})
    return value or 0.0


async def test_offline_syncing_and_conflict_are_recorded_once_each_and_pause_nothing(
    web: Web,
) -> None:
    """The phone or network offline, a sync in progress and a session open in another browser
    are each recorded (state, reason, one `whatsapp_web.account_state` event, the state gauge
    and one count of the change), a probe that sees the same state again adds nothing, and
    none of them pauses the account: its sends wait or take the session back on their own."""
    session, device = await web.open()
    assert (await web.account()).state == "connected"
    for mode, online, main_ready, state in (
        ("MAIN", False, True, "offline"),
        ("SYNCING", True, False, "syncing"),
        ("CONFLICT", True, True, "conflict"),
    ):
        before = changes(state)
        previous = (await web.account()).state
        await web.fake.set_mode(device, mode, online=online, main_ready=main_ready)
        assert await web.probe_when(session, state) == state
        assert await web.supervisor.probe(session) == state  # the same state seen again
        row = await web.account()
        assert row.state == state and row.state_reason and not row.pause_in_force
        assert gauge(state) == 1 and gauge("connected") == 0
        assert changes(state) == before + 1
        recorded = [
            e for e in await web.events("whatsapp_web.account_state") if e["state"] == state
        ]
        assert len(recorded) == 1, recorded
        assert recorded[0]["previous"] == previous and recorded[0]["account"] == ACCOUNT
    assert await web.events("whatsapp_web.account_paused") == []


async def test_a_logout_pauses_the_account_with_whatsapps_reason_until_it_is_linked_again(
    web: Web,
) -> None:
    """Logged out (QR needed) is recorded with WhatsApp's reason and pauses all of the
    account's sends with no end time, with one `account_paused` event however often it is
    probed; linking it again lifts the pause, with one `account_resumed` event."""
    session, device = await web.open()
    await web.fake.logout(device, "md_opt_out")
    assert await web.probe_when(session, "logged_out") == "logged_out"
    await web.supervisor.probe(session)
    row = await web.account()
    assert (row.state, row.state_reason) == ("logged_out", "md_opt_out")
    assert row.pause_in_force and (row.pause_code, row.pause_scope) == ("logged_out", "all")
    assert row.paused_until is None and "md_opt_out" in (row.pause_reason or "")
    assert gauge("logged_out") == 1
    paused = await web.events("whatsapp_web.account_paused")
    assert [(p["code"], p["account"]) for p in paused] == [("logged_out", ACCOUNT)]

    await web.fake.link(device)
    assert await web.probe_when(session, "connected") == "connected"
    row = await web.account()
    assert row.state == "connected" and not row.pause_in_force
    assert await web.events("whatsapp_web.account_resumed") == [
        {"account": ACCOUNT, "by": "linked"}
    ]


async def test_a_ban_pauses_the_account_and_a_lifted_ban_resumes_it(web: Web) -> None:
    """WhatsApp's terms-of-service block is recorded as banned and pauses every send with no end
    time; once WhatsApp Web is connected again the pause is lifted."""
    session, device = await web.open()
    await web.fake.set_mode(device, "TOS_BLOCK")
    assert await web.probe_when(session, "banned") == "banned"
    row = await web.account()
    assert row.state == "banned" and "TOS_BLOCK" in (row.state_reason or "")
    assert row.pause_in_force and (row.pause_code, row.pause_scope) == ("banned", "all")
    assert row.paused_until is None
    await web.fake.set_mode(device, "MAIN")
    assert await web.probe_when(session, "connected") == "connected"
    assert not (await web.account()).pause_in_force
    assert len(await web.events("whatsapp_web.account_resumed")) == 1


async def test_an_idle_phone_gets_one_reminder_per_quiet_spell_and_using_it_resets_that(
    web: Web,
) -> None:
    """A phone unused for less than the reminder threshold (12 days here) gets nothing; past it,
    one `whatsapp_web.inactivity_reminder` however many probes follow, naming when WhatsApp
    will log the device out; a message typed on the phone resets the clock, and a new quiet
    spell past the threshold gets its own reminder. Time passing is the stored last-use time
    moving back, as the reminder reads it from the database's clock."""
    session, device = await web.open()
    pool = web.pool

    async def idle_for(days: float) -> None:
        await pool.execute(
            "UPDATE whatsapp_web_accounts SET phone_active_at = now() - make_interval("
            "secs => $2::float8 * 86400) WHERE account = $1",
            ACCOUNT,
            days,
        )

    await idle_for(11.9)
    await web.supervisor.probe(session)
    assert await web.events("whatsapp_web.inactivity_reminder") == []
    idle = REGISTRY.get_sample_value("shvya_whatsapp_web_phone_idle_days", {"account": ACCOUNT})
    assert idle == pytest.approx(11.9, abs=0.01)

    await idle_for(12.5)
    for _ in range(3):
        await web.supervisor.probe(session)
    (reminder,) = await web.events("whatsapp_web.inactivity_reminder")
    row = await web.account()
    assert row.phone_active_at is not None and row.reminder_sent_at is not None
    assert reminder["account"] == ACCOUNT
    assert reminder["phone_last_active_at"] == row.phone_active_at.isoformat()
    assert datetime.fromisoformat(reminder["logout_expected_at"]) == (
        row.phone_active_at + timedelta(days=14)
    )

    # The owner types a message on the phone: the page sees it as the account's own message.
    await web.fake.receive(
        device, "+15550102001", "typed on the phone", msg_id="true_15550102001@c.us_PHONE0001"
    )
    used = await eventually(
        web.account,
        lambda r: (
            r.reminder_sent_at is None
            and r.phone_active_at is not None
            and (r.now - r.phone_active_at).total_seconds() < 300
        ),
        timeout=20,
    )
    assert used.phone_active_at is not None
    await web.supervisor.probe(session)
    assert len(await web.events("whatsapp_web.inactivity_reminder")) == 1

    await idle_for(13)
    await web.supervisor.probe(session)
    await web.supervisor.probe(session)
    assert len(await web.events("whatsapp_web.inactivity_reminder")) == 2


async def test_a_message_this_platform_sent_is_not_taken_for_the_phone_being_used(
    web: Web,
) -> None:
    """The account's own messages that the channel sent (their ids are noted before the send)
    do not count as the owner using the phone, so they cannot hide an idle phone; one typed on
    the phone does."""
    session, _device = await web.open()
    await web.pool.execute(
        "UPDATE whatsapp_web_accounts SET phone_active_at = now() - interval '13 days'"
        " WHERE account = $1",
        ACCOUNT,
    )
    ours = "true_15550102002@c.us_3EB0OURS0001"
    web.supervisor.sent_ids.append(ours)
    await web.supervisor.on_event(session, "own_message", {"id": ours, "t": int(time.time())})
    row = await web.account()
    assert row.phone_active_at is not None
    assert (row.now - row.phone_active_at).total_seconds() > 12 * 86400
    typed = {"id": "true_15550102002@c.us_PHONE0002", "t": int(time.time())}
    await web.supervisor.on_event(session, "own_message", typed)
    row = await web.account()
    assert row.phone_active_at is not None
    assert (row.now - row.phone_active_at).total_seconds() < 300
