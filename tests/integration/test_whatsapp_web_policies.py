"""WhatsApp Web's ban-aware rules through the real send handler, policy engine and database:
warm-up, the first-contact and identical-text caps, quiet hours by default, an account's pause
(a timelock lets warm chats through), the move to WhatsApp Cloud, and the account lease.

WhatsApp Web's adapter is not configured here, so sends that pass go to the log channel under
WhatsApp Web's rules; what earlier sends left behind is written as rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shvya_common.errors import DeferJob
from shvya_common.whatsapp import web_accounts as db
from shvya_dispatch.app import web_rules
from shvya_dispatch.web_policy import text_hash
from tests.integration.dispatch_support import (
    Dispatcher,
    dispatch_settings,
    make_company,
    make_lead,
    message_row,
    queue_send,
)

pytestmark = pytest.mark.integration
ACCOUNT = "default"


@pytest.fixture
async def world(plat, db_url):
    settings = dispatch_settings(
        db_url,
        policy_whatsapp_web_min_gap_seconds=0,
        policy_whatsapp_web_jitter_seconds=0,
        policy_whatsapp_web_warmup="2,3",
        policy_whatsapp_web_first_contact_daily_cap=1,
        policy_whatsapp_web_identical_text_hourly_cap=2,
    )
    async with Dispatcher(plat.pool, settings) as dispatcher:
        clouds: set[uuid.UUID] = set()

        async def cloud_for(company_id: uuid.UUID) -> bool:
            return company_id in clouds

        assert dispatcher.deps is not None
        dispatcher.deps.policies.web = web_rules(settings, plat.pool, None, cloud_for)
        dispatcher.deps = type(dispatcher.deps)(**{**dispatcher.deps.__dict__, "bus": plat.bus})
        dispatcher.clouds = clouds  # type: ignore[attr-defined]
        yield dispatcher


async def linked(pool, days_ago: float) -> None:
    await pool.execute(
        "INSERT INTO whatsapp_web_accounts (account, linked_at) VALUES ($1, now() - $2::interval)"
        " ON CONFLICT (account) DO UPDATE SET linked_at = EXCLUDED.linked_at",
        ACCOUNT,
        timedelta(days=days_ago),
    )


async def earlier_send(pool, company, lead, text, *, first_contact, ago=timedelta(minutes=5)):
    """An outbound WhatsApp Web message that left this account earlier."""
    await pool.execute(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, status, sent_at,"
        " meta) VALUES ($1, $2, 'outbound', 'whatsapp_web', $3, 'sent', now() - $4::interval,"
        " $5)",
        company,
        lead,
        text,
        ago,
        {"account": ACCOUNT, "first_contact": first_contact, "text_hash": text_hash(text)},
    )


async def wrote(pool, company, lead, channel="whatsapp_web", ago=timedelta(minutes=1)):
    await pool.execute(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, status, created_at)"
        " VALUES ($1, $2, 'inbound', $3, 'hi', 'received', now() - $4::interval)",
        company,
        lead,
        channel,
        ago,
    )


async def web_send(world, company, lead, text="Hello there", **kw):
    message_id, params = await queue_send(
        world.pool, company, lead, channel="whatsapp_web", text=text, **kw
    )
    return message_id, await world.send(message_id, params)


async def test_a_new_number_warms_up_day_by_day(world):
    """On its first day a new number sends the warm-up's first limit, then waits for the next
    local day; a number linked long ago has only the daily cap."""
    pool = world.pool
    company = await make_company(pool)
    await linked(pool, days_ago=0)
    lead = await make_lead(pool, company)
    await wrote(pool, company, lead)
    for n in range(2):
        _, result = await web_send(world, company, lead, text=f"reply {n}")
        assert result["status"] == "logged"
    with pytest.raises(DeferJob, match=r"daily cap.*warm-up day 1 of 2"):
        await web_send(world, company, lead, text="reply 3")
    await linked(pool, days_ago=10)
    _, result = await web_send(world, company, lead, text="reply 4")
    assert result["status"] == "logged"


async def test_first_contacts_have_their_own_daily_cap(world):
    """Past the first-contact cap a message to someone the company never talked with waits for
    the next day, while a reply to a lead who wrote still goes; sends record which they were."""
    pool = world.pool
    company = await make_company(pool)
    await linked(pool, days_ago=30)
    old = await make_lead(pool, company, phone="+15551230002")
    await earlier_send(pool, company, old, "first hello", first_contact=True)
    cold = await make_lead(pool, company, phone="+15551230003")
    with pytest.raises(DeferJob, match="1 first contacts per whatsapp web account per day") as info:
        await web_send(world, company, cold, to="+15551230003")
    tomorrow = info.value.until
    assert tomorrow > datetime.now(UTC) and tomorrow.astimezone(UTC).time().hour == 0
    warm = await make_lead(pool, company, phone="+15551230004")
    await wrote(pool, company, warm)
    message_id, result = await web_send(world, company, warm, to="+15551230004")
    assert result["status"] == "logged"
    meta = (await message_row(pool, message_id))["meta"]
    assert meta["first_contact"] is False and meta["text_hash"] == text_hash("Hello there")


async def test_identical_texts_are_limited_per_hour(world):
    """A text sent as many times as the hourly limit in the last hour (case and spacing aside)
    waits until the oldest of them is an hour old; another text goes."""
    pool = world.pool
    company = await make_company(pool)
    await linked(pool, days_ago=30)
    lead = await make_lead(pool, company)
    await wrote(pool, company, lead)
    await earlier_send(
        pool, company, lead, "Big SALE today!", first_contact=False, ago=timedelta(minutes=50)
    )
    await earlier_send(
        pool, company, lead, "big  sale today!", first_contact=False, ago=timedelta(minutes=10)
    )
    with pytest.raises(DeferJob, match="2 identical texts") as info:
        await web_send(world, company, lead, text="BIG sale   today!")
    wait = info.value.until - datetime.now(UTC)
    assert timedelta(minutes=5) < wait < timedelta(minutes=11)
    _, result = await web_send(world, company, lead, text="A different text")
    assert result["status"] == "logged"


async def test_quiet_hours_apply_in_the_leads_zone_by_default(plat, db_url):
    """With the default settings WhatsApp Web sends only 08:00–21:00 in the lead's time zone."""
    settings = dispatch_settings(db_url, policy_whatsapp_web_quiet_hours="08:00-21:00")
    pool = plat.pool
    company = await make_company(pool)
    hour = datetime.now(UTC).hour
    offset = (3 - hour + 12) % 24 - 12  # a zone where it is 03:xx now
    zone = "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"
    lead = await make_lead(pool, company, timezone=zone)
    async with Dispatcher(pool, settings) as dispatcher:
        message_id, params = await queue_send(pool, company, lead, channel="whatsapp_web")
        with pytest.raises(DeferJob, match="quiet hours: whatsapp_web sends only 08:00-21:00"):
            await dispatcher.send(message_id, params)


async def test_a_timelock_pauses_first_contacts_only_and_a_ban_everything(world):
    """While the reach-out timelock pauses an account, a lead who wrote still gets the reply and
    a cold lead waits; a pause of everything defers both, re-checked, with the reason."""
    pool = world.pool
    company = await make_company(pool)
    await linked(pool, days_ago=30)
    until = datetime.now(UTC) + timedelta(hours=6)
    await db.start_pause(pool, ACCOUNT, "timelock", "reach-out timelock", until, "new_contacts")
    warm = await make_lead(pool, company, phone="+15551230005")
    await wrote(pool, company, warm)
    _, result = await web_send(world, company, warm, to="+15551230005")
    assert result["status"] == "logged"
    cold = await make_lead(pool, company, phone="+15551230006")
    with pytest.raises(DeferJob, match=r"account default paused \(timelock\)"):
        await web_send(world, company, cold, to="+15551230006")
    await db.start_pause(pool, ACCOUNT, "banned", "TOS_BLOCK", None, "all")
    with pytest.raises(DeferJob, match="paused") as info:
        await web_send(world, company, warm, to="+15551230005", text="another")
    assert info.value.until <= datetime.now(UTC) + timedelta(seconds=301)
    row = await db.read_account(pool, ACCOUNT)
    assert row is not None and row.pause_scope == "all" and row.paused_until is None
    assert await db.lift_pause(pool, ACCOUNT)
    _, result = await web_send(world, company, warm, to="+15551230005", text="after")
    assert result["status"] == "logged"


async def test_a_paused_accounts_send_moves_to_whatsapp_cloud_inside_the_window(world):
    """A company that also sends on WhatsApp Cloud gets a paused account's send moved there
    when the lead wrote to its Cloud number within 24 h: the Web send is cancelled and one Cloud
    send requested, in one transaction; outside the window it waits."""
    pool = world.pool
    company = await make_company(pool)
    world.clouds.add(company)
    await db.start_pause(pool, ACCOUNT, "restricted", "refusals", None, "all")
    lead = await make_lead(pool, company, phone="+15551230007")
    await wrote(pool, company, lead, channel="whatsapp_cloud", ago=timedelta(hours=2))
    message_id, result = await web_send(world, company, lead, to="+15551230007")
    assert result["status"] == "rerouted"
    old = await message_row(pool, message_id)
    assert old["status"] == "cancelled" and "moved to whatsapp_cloud" in old["last_error"]
    new = await pool.fetchrow(
        "SELECT channel, status, body FROM messages WHERE id = $1",
        uuid.UUID(result["message_id"]),
    )
    assert (new["channel"], new["status"], new["body"]) == (
        "whatsapp_cloud",
        "queued",
        "Hello there",
    )
    stale = await make_lead(pool, company, phone="+15551230008")
    await wrote(pool, company, stale, channel="whatsapp_cloud", ago=timedelta(hours=30))
    with pytest.raises(DeferJob, match="paused"):
        await web_send(world, company, stale, to="+15551230008")
    await db.lift_pause(pool, ACCOUNT)


async def test_a_send_kept_waiting_too_long_by_a_pause_is_held(world):
    """A send that has waited longer than POLICY_WHATSAPP_WEB_PAUSED_MAX_AGE_HOURS behind a
    paused account is held instead of going out days late."""
    pool = world.pool
    company = await make_company(pool)
    await db.start_pause(pool, ACCOUNT, "logged_out", "logged out", None, "all")
    lead = await make_lead(pool, company)
    message_id, params = await queue_send(pool, company, lead, channel="whatsapp_web")
    await pool.execute(
        "UPDATE messages SET created_at = now() - interval '4 days' WHERE id = $1", message_id
    )
    result = await world.send(message_id, params)
    assert result["status"] == "held"
    assert (
        "held after waiting more than 72 h" in (await message_row(pool, message_id))["last_error"]
    )
    await db.lift_pause(pool, ACCOUNT)


async def test_one_replica_holds_an_account_and_another_takes_over_when_it_lapses(plat):
    """The lease goes to one owner; a second is refused while it lives, takes over (a new
    epoch) once it lapses, and the first then finds it gone."""
    pool = plat.pool
    account = f"lease-{uuid.uuid4().hex[:8]}"
    first = await db.acquire_lease(pool, account, "replica-a", 30)
    assert first is not None
    assert await db.acquire_lease(pool, account, "replica-a", 30) == first  # a renewal
    assert await db.acquire_lease(pool, account, "replica-b", 30) is None
    await pool.execute(
        "UPDATE whatsapp_web_accounts SET lease_until = now() - interval '1 second'"
        " WHERE account = $1",
        account,
    )
    taken = await db.acquire_lease(pool, account, "replica-b", 30)
    assert taken == first + 1
    assert await db.acquire_lease(pool, account, "replica-a", 30) is None
    await db.release_lease(pool, account, "replica-b")
    assert await db.acquire_lease(pool, account, "replica-a", 30) == taken + 1
