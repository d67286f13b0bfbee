"""Every send-time policy rule, through the real handler, policy engine and database.

WhatsApp Cloud sends go to a local Graph server; WhatsApp Web and email sends, whose adapters
are not configured here, go to the log channel under the rules of their declared channel.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from shvya_common.contracts import SendParams
from shvya_common.db import create_pool
from shvya_common.errors import DeferJob
from shvya_dispatch.pauses import run_command
from tests.fakes.graph_server import FakeGraph, GraphFault
from tests.integration.dispatch_support import (
    PHONE_ID,
    TOKEN,
    Dispatcher,
    dispatch_settings,
    event_types,
    make_company,
    make_lead,
    make_template,
    message_row,
    queue_send,
    send_worker,
)
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(db_url):
    pool = await create_pool(db_url, 1, 10)
    yield pool
    await pool.close()


@pytest.fixture
async def graph():
    async with FakeGraph(token=TOKEN, phone_number_id=PHONE_ID) as server:
        yield server


@pytest.fixture
async def dispatcher(pool, graph, db_url):
    async with Dispatcher(pool, dispatch_settings(db_url, graph)) as d:
        yield d


@pytest.fixture
async def company(pool):
    return await make_company(pool)


def zone_at_local_hour(hour: int) -> str:
    """A fixed-offset zone where the local time is now `hour`:xx (Etc/GMT signs are inverted)."""
    offset = (hour - datetime.now(UTC).hour + 12) % 24 - 12
    if offset == 0:
        return "Etc/GMT"
    return f"Etc/GMT{-offset:+d}"


async def db_now(pool) -> datetime:
    return await pool.fetchval("SELECT now()")


# --- Suppression -------------------------------------------------------------------------------


async def suppress(pool, company, channel, address, scope="all", age=timedelta(0)):
    await pool.execute(
        "INSERT INTO suppressions (company_id, channel, address, scope, reason, created_at)"
        " VALUES ($1, $2, $3, $4, 'optout_keyword', now() - $5::interval)",
        company,
        channel,
        address,
        scope,
        age,
    )


async def test_suppressed_recipient_is_never_sent_to(dispatcher, graph, pool, company):
    """A send to a suppressed number completes as 'suppressed' with an event, and no request."""
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC))
    await suppress(pool, company, "whatsapp_cloud", "+15551230001")
    message_id, params = await queue_send(pool, company, lead)
    result = await dispatcher.send(message_id, params)
    row = await message_row(pool, message_id)
    assert result["status"] == row["status"] == "suppressed"
    assert "suppressed" in row["last_error"]
    assert "message.suppressed" in await event_types(pool, company)
    assert graph.requests == []


async def test_whatsapp_web_opt_out_also_binds_cloud_sends(dispatcher, graph, pool, company):
    """An opt-out received on WhatsApp Web suppresses WhatsApp Cloud sends to the same number."""
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC))
    await suppress(pool, company, "whatsapp_web", "+15551230001")
    message_id, params = await queue_send(pool, company, lead)
    assert (await dispatcher.send(message_id, params))["status"] == "suppressed"
    assert graph.requests == []


async def test_marketing_suppression_blocks_marketing_and_followups_only(
    dispatcher, graph, pool, company
):
    """Scope 'marketing' suppresses marketing and follow-up sends but not a reply."""
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC))
    await suppress(pool, company, "whatsapp_cloud", "+15551230001", scope="marketing")
    for purpose in ("marketing", "followup"):
        message_id, params = await queue_send(pool, company, lead, purpose=purpose)
        assert (await dispatcher.send(message_id, params))["status"] == "suppressed"
    message_id, params = await queue_send(pool, company, lead, purpose="reply")
    assert (await dispatcher.send(message_id, params))["status"] == "sent"
    assert len(graph.requests) == 1


async def test_optout_confirmation_reaches_a_just_suppressed_lead(dispatcher, graph, pool, company):
    """The opt-out confirmation is the one send allowed after a fresh opt-out; a reply is not."""
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC))
    await suppress(pool, company, "whatsapp_cloud", "+15551230001")
    reply_id, reply = await queue_send(pool, company, lead, purpose="reply")
    assert (await dispatcher.send(reply_id, reply))["status"] == "suppressed"
    confirm_id, confirm = await queue_send(
        pool, company, lead, purpose="optout_confirmation", text="You will get no more messages."
    )
    assert (await dispatcher.send(confirm_id, confirm))["status"] == "sent"
    assert [r.body["text"]["body"] for r in graph.sent] == ["You will get no more messages."]


async def test_optout_confirmation_long_after_the_opt_out_is_suppressed(
    dispatcher, graph, pool, company
):
    """An 'opt-out confirmation' days after the opt-out is not a confirmation: suppressed."""
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC))
    await suppress(pool, company, "whatsapp_cloud", "+15551230001", age=timedelta(days=3))
    message_id, params = await queue_send(pool, company, lead, purpose="optout_confirmation")
    assert (await dispatcher.send(message_id, params))["status"] == "suppressed"
    assert graph.requests == []


async def test_email_suppression_ignores_address_case(pool, db_url, company):
    """A suppressed email address blocks sends to any capitalisation of it."""
    lead = await make_lead(
        pool, company, phone=None, email="Asha@Example.com", timezone=zone_at_local_hour(12)
    )
    await suppress(pool, company, "email", "asha@example.com")
    async with Dispatcher(pool, dispatch_settings(db_url)) as d:
        message_id, params = await queue_send(
            pool, company, lead, channel="email", to="Asha@Example.com"
        )
        assert (await d.send(message_id, params))["status"] == "suppressed"


# --- The 24-hour customer-service window -------------------------------------------------------


async def test_free_text_inside_the_window_goes_as_text(dispatcher, graph, pool, company):
    """A reply to a lead who wrote 23 hours ago is sent as free text."""
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC) - timedelta(hours=23))
    message_id, params = await queue_send(pool, company, lead)
    assert (await dispatcher.send(message_id, params))["status"] == "sent"
    assert graph.requests[0].body["type"] == "text"


async def with_fallback(pool, company):
    await pool.execute(
        'UPDATE companies SET settings = settings || \'{"whatsapp_fallback_template":'
        ' {"name": "reengage", "language": "en_US"}}\' WHERE id = $1',
        company,
    )
    await make_template(
        pool, company, "reengage", "Hi {{1}}, shall we continue?", ["first_name"], language="hi"
    )
    return await make_template(
        pool, company, "reengage", "Hi {{1}}, shall we continue?", ["first_name"]
    )


async def test_free_text_outside_the_window_becomes_the_fallback_template(
    dispatcher, graph, pool, company
):
    """Free text to a lead who last wrote 25 hours ago is sent as the company's fallback
    template (in its configured language); the free text never reaches Graph."""
    template = await with_fallback(pool, company)
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC) - timedelta(hours=25))
    message_id, params = await queue_send(pool, company, lead)
    assert (await dispatcher.send(message_id, params))["status"] == "sent"
    assert len(graph.requests) == 1
    body = graph.requests[0].body
    assert body["type"] == "template" and body["template"]["name"] == "reengage"
    assert body["template"]["language"] == {"code": "en_US"}
    assert body["template"]["components"][0]["parameters"] == [{"type": "text", "text": "Asha"}]
    row = await message_row(pool, message_id)
    assert row["meta"]["template"]["id"] == str(template)
    assert "24-hour" in row["meta"]["converted_to_template"]["reason"]
    assert "message.converted_to_template" in await event_types(pool, company)


async def test_first_message_to_a_lead_who_never_wrote_is_held_without_a_template(
    dispatcher, graph, pool, company
):
    """A business-initiated free text to a lead who never wrote, with no fallback template,
    is held (with an event) and nothing is sent."""
    lead = await make_lead(pool, company, last_inbound_at=None)
    message_id, params = await queue_send(pool, company, lead, purpose="followup")
    result = await dispatcher.send(message_id, params)
    row = await message_row(pool, message_id)
    assert result["status"] == row["status"] == "held"
    assert "never wrote" in row["last_error"]
    assert "message.held" in await event_types(pool, company)
    assert graph.requests == []


async def test_a_lead_flagged_undeliverable_is_not_sent_to_until_it_writes(
    dispatcher, graph, pool, company
):
    """After Meta's 131026 flagged the lead, a campaign template to it is held with the flag's
    reason and never reaches Graph; once the lead writes again (the flag cleared) it is sent."""
    template = await make_template(pool, company, "welcome", "Welcome!", [])
    lead = await make_lead(pool, company, last_inbound_at=None)
    await pool.execute(
        "UPDATE leads SET whatsapp_undeliverable_at = now(),"
        " whatsapp_undeliverable_reason = '131026: Message undeliverable' WHERE id = $1",
        lead,
    )
    message_id, params = await queue_send(
        pool, company, lead, template_id=template, purpose="marketing"
    )
    result = await dispatcher.send(message_id, params)
    row = await message_row(pool, message_id)
    assert result["status"] == row["status"] == "held"
    assert "undeliverable" in row["last_error"] and "131026" in row["last_error"]
    assert graph.requests == []
    await pool.execute(
        "UPDATE leads SET whatsapp_undeliverable_at = NULL, whatsapp_undeliverable_reason = NULL,"
        " last_inbound_at = now() WHERE id = $1",
        lead,
    )
    message_id, params = await queue_send(pool, company, lead, template_id=template)
    assert (await dispatcher.send(message_id, params))["status"] == "sent"
    assert len(graph.requests) == 1


async def test_approved_template_goes_out_whatever_the_window(dispatcher, graph, pool, company):
    """An explicit approved template is sent to a lead who never wrote."""
    template = await make_template(pool, company, "welcome", "Welcome!", [])
    lead = await make_lead(pool, company, last_inbound_at=None)
    message_id, params = await queue_send(pool, company, lead, template_id=template)
    assert (await dispatcher.send(message_id, params))["status"] == "sent"
    assert graph.requests[0].body["template"] == {"name": "welcome", "language": {"code": "en_US"}}


async def test_window_rule_applies_on_the_log_stand_in_too(pool, db_url, company):
    """Without WhatsApp credentials the log channel records sends, under the same window rule."""
    async with Dispatcher(pool, dispatch_settings(db_url)) as d:
        lead = await make_lead(pool, company, last_inbound_at=None)
        message_id, params = await queue_send(pool, company, lead)
        assert (await d.send(message_id, params))["status"] == "held"
        inside = await make_lead(
            pool, company, phone="+15551230002", last_inbound_at=datetime.now(UTC)
        )
        message_id, params = await queue_send(pool, company, inside, to="+15551230002")
        assert (await d.send(message_id, params))["status"] == "logged"


# --- Quiet hours (email) -----------------------------------------------------------------------


async def test_email_in_the_leads_night_is_deferred_to_8am_local(pool, db_url, company):
    """At 03:xx in the lead's zone an email is deferred to 08:00 that morning, local time."""
    zone = zone_at_local_hour(3)
    lead = await make_lead(pool, company, phone=None, email="asha@example.com", timezone=zone)
    async with Dispatcher(pool, dispatch_settings(db_url)) as d:
        message_id, params = await queue_send(
            pool, company, lead, channel="email", to="asha@example.com"
        )
        with pytest.raises(DeferJob, match="quiet hours") as caught:
            await d.send(message_id, params)
    local_now = (await db_now(pool)).astimezone(ZoneInfo(zone))
    expected = local_now.replace(hour=8, minute=0, second=0, microsecond=0)
    assert caught.value.until == expected
    assert (await message_row(pool, message_id))["status"] == "queued"


async def test_email_falls_back_to_the_company_zone(pool, db_url):
    """A lead without a time zone gets the company's: night there defers, day there sends."""
    night_zone = zone_at_local_hour(23)
    night = await make_company(pool, timezone=night_zone)
    day = await make_company(pool, timezone=zone_at_local_hour(12))
    async with Dispatcher(pool, dispatch_settings(db_url)) as d:
        for company, outcome in ((night, "deferred"), (day, "logged")):
            lead = await make_lead(pool, company, phone=None, email="lead@example.com")
            message_id, params = await queue_send(
                pool, company, lead, channel="email", to="lead@example.com"
            )
            try:
                result = (await d.send(message_id, params))["status"]
            except DeferJob as deferral:
                result = "deferred"
                local = deferral.until.astimezone(ZoneInfo(night_zone))
                assert (local.hour, local.minute) == (8, 0)
            assert result == outcome


async def test_company_can_override_quiet_hours(pool, db_url):
    """companies.settings.policies.email.quiet_hours replaces the default window."""
    company = await make_company(
        pool, settings={"policies": {"email": {"quiet_hours": "00:00-23:59"}}}
    )
    lead = await make_lead(
        pool, company, phone=None, email="owl@example.com", timezone=zone_at_local_hour(3)
    )
    async with Dispatcher(pool, dispatch_settings(db_url)) as d:
        message_id, params = await queue_send(
            pool, company, lead, channel="email", to="owl@example.com"
        )
        assert (await d.send(message_id, params))["status"] == "logged"


# --- Pacing ------------------------------------------------------------------------------------


async def test_second_message_to_a_recipient_waits_15_seconds_after_the_first(
    dispatcher, graph, pool, company
):
    """The next WhatsApp Cloud send to the same number is deferred to at least 15 s after the
    first one's sent_at; another number is not held up."""
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC))
    first_id, first = await queue_send(pool, company, lead)
    second_id, second = await queue_send(pool, company, lead)
    await dispatcher.send(first_id, first)
    with pytest.raises(DeferJob, match="pacing") as caught:
        await dispatcher.send(second_id, second)
    sent_at = (await message_row(pool, first_id))["sent_at"]
    assert caught.value.until >= sent_at + timedelta(seconds=15)
    assert caught.value.until <= await db_now(pool) + timedelta(seconds=15)

    other = await make_lead(pool, company, phone="+15551230002", last_inbound_at=datetime.now(UTC))
    other_id, other_params = await queue_send(pool, company, other, to="+15551230002")
    assert (await dispatcher.send(other_id, other_params))["status"] == "sent"


async def test_concurrent_sends_to_one_recipient_take_one_slot(dispatcher, graph, pool, company):
    """Of six sends to one number racing for the slot, exactly one goes out; the rest defer."""
    graph.delay = 0.2
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC))
    sends = [await queue_send(pool, company, lead) for _ in range(6)]
    outcomes = await asyncio.gather(
        *(dispatcher.send(m, p) for m, p in sends), return_exceptions=True
    )
    assert sum(isinstance(o, dict) and o["status"] == "sent" for o in outcomes) == 1
    assert sum(isinstance(o, DeferJob) for o in outcomes) == 5
    assert len(graph.requests) == 1


async def test_slot_of_a_crashed_send_frees_when_its_lease_expires(
    dispatcher, graph, pool, company
):
    """A slot leased by a process that died mid-send blocks only until the lease runs out."""
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC))
    await pool.execute(
        "INSERT INTO send_pacing (company_id, channel, pacing_key, next_allowed_at, lease_until,"
        " lease_message_id) VALUES ($1, 'whatsapp_cloud', '+15551230001', now(),"
        " now() + interval '100 seconds', $2)",
        company,
        uuid.uuid4(),
    )
    message_id, params = await queue_send(pool, company, lead)
    with pytest.raises(DeferJob, match="in flight"):
        await dispatcher.send(message_id, params)
    await pool.execute("UPDATE send_pacing SET lease_until = now() - interval '1 second'")
    assert (await dispatcher.send(message_id, params))["status"] == "sent"


async def test_whatsapp_web_paces_each_account_by_a_minute_plus_jitter(pool, db_url, company):
    """Two WhatsApp Web sends from one account, even to different people, are at least 60 s
    (and at most 60 s + jitter) apart."""
    settings = dispatch_settings(db_url, policy_whatsapp_web_jitter_seconds=20)
    async with Dispatcher(pool, settings) as d:
        a = await make_lead(pool, company, phone="+15551230001")
        b = await make_lead(pool, company, phone="+15551230002")
        first_id, first = await queue_send(pool, company, a, channel="whatsapp_web")
        second_id, second = await queue_send(
            pool, company, b, channel="whatsapp_web", to="+15551230002"
        )
        assert (await d.send(first_id, first))["status"] == "logged"
        with pytest.raises(DeferJob, match="per account") as caught:
            await d.send(second_id, second)
    sent_at = (await message_row(pool, first_id))["sent_at"]
    gap = caught.value.until - sent_at
    assert timedelta(seconds=60) <= gap <= timedelta(seconds=80.5)
    key = await pool.fetchval("SELECT pacing_key FROM send_pacing WHERE channel = 'whatsapp_web'")
    assert key == "default"


async def test_whatsapp_web_daily_cap_defers_to_the_next_local_day(pool, db_url):
    """When an account's daily cap is reached, the next send waits for local midnight."""
    company = await make_company(
        pool,
        timezone="Asia/Kolkata",
        settings={
            "policies": {
                "whatsapp_web": {"daily_cap": 2, "min_gap_seconds": 0, "jitter_seconds": 0}
            }
        },
    )
    lead = await make_lead(pool, company)
    async with Dispatcher(pool, dispatch_settings(db_url)) as d:
        sends = [await queue_send(pool, company, lead, channel="whatsapp_web") for _ in range(3)]
        assert (await d.send(*sends[0]))["status"] == "logged"
        assert (await d.send(*sends[1]))["status"] == "logged"
        with pytest.raises(DeferJob, match="daily cap") as caught:
            await d.send(*sends[2])
    kolkata = ZoneInfo("Asia/Kolkata")
    today = (await db_now(pool)).astimezone(kolkata).date()
    assert caught.value.until == datetime.combine(
        today + timedelta(days=1), datetime.min.time(), tzinfo=kolkata
    )


async def test_deferred_send_is_parked_without_spending_an_attempt(plat, db_url):
    """Through the real consumer loop, a paced send is parked in a timer at the earliest
    allowed moment with status 'scheduled' and no attempt spent."""
    company = await make_company(plat.pool)
    lead = await make_lead(plat.pool, company, last_inbound_at=datetime.now(UTC))
    async with Dispatcher(plat.pool, dispatch_settings(db_url)) as d:
        assert d.deps is not None
        async with send_worker(plat, d.deps):
            ids = []
            for n in range(2):
                params = SendParams(
                    company_id=company,
                    lead_id=lead,
                    channel="whatsapp_cloud",
                    to="+15551230001",
                    text=f"message {n}",
                    send_key=f"pace:{n}",
                )
                async with plat.bus.unit() as unit:
                    message_id, _ = await unit.request_send(params, priority=100)
                ids.append(message_id)

            async def statuses():
                rows = await plat.pool.fetch(
                    "SELECT id, status FROM messages WHERE id = ANY($1::uuid[])", ids
                )
                return sorted(r["status"] for r in rows)

            await eventually(statuses, lambda s: s == ["logged", "scheduled"])
    parked = await plat.pool.fetchrow(
        "SELECT m.id, m.attempts, m.meta, m.sent_at, t.due_at, t.reason, t.ledger"
        " FROM messages m JOIN timers t ON t.target_id = m.id"
        " WHERE m.status = 'scheduled'"
    )
    first_sent = await plat.pool.fetchval("SELECT sent_at FROM messages WHERE status = 'logged'")
    assert parked["attempts"] == 0 and parked["ledger"] == "messages"
    assert parked["due_at"] >= first_sent + timedelta(seconds=15)
    assert parked["meta"]["deferred_until"] == parked["due_at"].isoformat()
    assert parked["reason"].startswith("pacing")


# --- Pauses, by hand ---------------------------------------------------------------------------


async def test_operator_lists_and_lifts_a_pause(dispatcher, graph, pool, db_url, company):
    """`python -m shvya_dispatch.pauses` lists a pause in force and lifts it, after which the
    company's sends go out again."""
    lead = await make_lead(pool, company, last_inbound_at=datetime.now(UTC))
    graph.script(GraphFault(368))
    message_id, params = await queue_send(pool, company, lead)
    with pytest.raises(DeferJob):
        await dispatcher.send(message_id, params)

    code, listing = await run_command(["list"], db_url)
    assert code == 0 and str(company) in listing and "code 368" in listing
    assert "in force" in listing
    code, output = await run_command(["resume", str(company)], db_url)
    assert code == 0 and "lifted" in output
    assert (await run_command(["resume", str(company)], db_url))[0] == 1
    assert "channel.resumed" in await event_types(pool, company)
    assert (await run_command(["list"], db_url))[1] == "no channel pauses"

    await pool.execute("UPDATE send_pacing SET next_allowed_at = now()")
    await pool.execute("UPDATE messages SET status = 'queued' WHERE id = $1", message_id)
    assert (await dispatcher.send(message_id, params))["status"] == "sent"
