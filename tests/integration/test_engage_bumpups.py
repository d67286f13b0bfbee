"""followup.bumpup: the sweep picks leads silent after our last WhatsApp message, engage sends a
varied, personal nudge through dispatch, counts it on the lead, and stands down when the lead
has replied or the maximum is reached."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shvya_common.contracts import BumpupParams
from shvya_engage.followups import OPENINGS
from shvya_scheduler.sweeps import bumpup_key, sweep_bumpups
from tests.fakes.openai_server import Content, FakeOpenAI
from tests.integration.engage_helpers import (
    SYSTEM_PROMPT,
    add_message,
    engage_settings,
    engage_worker,
    finished_job,
    seed_lead,
)

pytestmark = pytest.mark.integration

DAYS = timedelta(days=3)
KEY = "sk-test-bumpup"


async def silent_lead(pool, *, phone="+15550100", channel="whatsapp_cloud", **kwargs):
    """A lead who wrote 5 days ago and has not answered our reply of 4 days ago."""
    lead = await seed_lead(pool, phone=phone, **kwargs)
    await add_message(
        pool, lead, "inbound", "Is solar worth it?", channel=channel, ago=timedelta(days=5)
    )
    last = await add_message(
        pool,
        lead,
        "outbound",
        "Yes! Want a free roof survey?",
        channel=channel,
        ago=timedelta(days=4),
    )
    return lead, last


async def bumpup_jobs(pool):
    return await pool.fetch(
        "SELECT id, lead_id, task_params, idempotency_key, priority FROM jobs"
        " WHERE task_name = 'followup.bumpup' ORDER BY created_at"
    )


async def followups(pool, lead):
    return await pool.fetch(
        "SELECT body, channel, recipient, priority, send_key, meta FROM messages"
        " WHERE lead_id = $1 AND meta->>'purpose' = 'followup' ORDER BY created_at",
        lead.lead_id,
    )


async def test_sweep_selects_only_silent_leads_whose_last_message_was_ours(plat):
    """Only a WhatsApp lead silent 3+ days after our message, under the maximum, is picked,
    and a second sweep enqueues nothing more."""
    due, anchor = await silent_lead(plat.pool)
    recent = await seed_lead(plat.pool, phone="+15550101")
    await add_message(plat.pool, recent, "outbound", "Hi!", ago=timedelta(days=1))
    replied, _ = await silent_lead(plat.pool, phone="+15550102")
    await add_message(
        plat.pool, replied, "inbound", "Let me think.", ago=timedelta(days=3, hours=12)
    )
    await silent_lead(plat.pool, phone=None, email="e@example.com", channel="email")
    maxed, _ = await silent_lead(plat.pool, phone="+15550103")
    for days in (3.5, 3.2, 3.1):
        await add_message(
            plat.pool,
            maxed,
            "outbound",
            "Just checking in",
            purpose="followup",
            ago=timedelta(days=days),
        )
    undelivered = await seed_lead(plat.pool, phone="+15550104")
    await add_message(plat.pool, undelivered, "inbound", "Hello", ago=timedelta(days=6))
    await add_message(
        plat.pool, undelivered, "outbound", "Hi!", ago=timedelta(days=5), status="dlq"
    )

    assert await sweep_bumpups(plat.bus, DAYS, max_bumps=3, limit=100) == 1
    assert await sweep_bumpups(plat.bus, DAYS, max_bumps=3, limit=100) == 0
    [job] = await bumpup_jobs(plat.pool)
    assert job["lead_id"] == due.lead_id and job["priority"] == 95
    assert job["task_params"] == {"lead_id": str(due.lead_id), "bump_number": 1}
    assert job["idempotency_key"] == bumpup_key(due.lead_id, anchor)
    # With a higher maximum the lead with three unanswered bump-ups becomes due again.
    assert await sweep_bumpups(plat.bus, DAYS, max_bumps=4, limit=100) == 1


async def test_bumpup_goes_out_on_whatsapp_and_is_counted(plat, base_env):
    """The handler asks dispatch for a followup send at priority 95 with a templated, personal
    text, and records the time and count on the lead; it is not repeated."""
    lead, _ = await silent_lead(plat.pool)
    assert await sweep_bumpups(plat.bus, DAYS, max_bumps=3, limit=10) == 1
    [job] = await bumpup_jobs(plat.pool)
    async with engage_worker(plat, engage_settings(base_env)):
        row = await finished_job(plat.pool, job["id"])
        assert row["status"] == "completed", row["last_error"]
        # A redelivery (or a replayed job) finds its send key taken and sends nothing new.
        again = await plat.bus.enqueue_job(
            "followup.bumpup",
            BumpupParams(lead_id=lead.lead_id, bump_number=1),
            lead_id=lead.lead_id,
        )
        repeated = await finished_job(plat.pool, again.id)
        assert repeated["result"] == {"skipped": "bump-up 1 already sent"}
    [sent] = await followups(plat.pool, lead)
    assert sent["channel"] == "whatsapp_cloud" and sent["recipient"] == "+15550100"
    assert sent["priority"] == 95 and sent["send_key"] == f"bumpup:{lead.lead_id}:1"
    assert sent["body"].split("!")[0] in {o.format(name=" Asha").split("!")[0] for o in OPENINGS}
    assert sent["meta"]["ai"]["responder"] == "offline"
    followup = await plat.pool.fetchval(
        "SELECT attributes->'followup' FROM leads WHERE id = $1", lead.lead_id
    )
    assert followup["count"] == 1 and followup["last_at"]
    event = await plat.pool.fetchval(
        "SELECT payload FROM events WHERE lead_id = $1 AND type = 'followup.bumpup_sent'",
        lead.lead_id,
    )
    assert event["bump_number"] == 1 and event["offline"] is True
    # Our bump-up is now the last message and it is recent: the sweep leaves the lead alone.
    assert await sweep_bumpups(plat.bus, DAYS, max_bumps=3, limit=10) == 0


async def test_bumpup_stands_down_when_the_lead_replied_meanwhile(plat, base_env):
    """A bump-up whose lead wrote after the sweep picked it sends nothing, and the lead's
    pending bump-up timers are cancelled."""
    lead, _ = await silent_lead(plat.pool)
    assert await sweep_bumpups(plat.bus, DAYS, max_bumps=3, limit=10) == 1
    await add_message(
        plat.pool, lead, "inbound", "Sorry, was travelling. Still interested!", channel="email"
    )
    timer = await plat.pool.fetchval(
        "INSERT INTO timers (kind, due_at, task_name, task_params, priority, lead_id)"
        " VALUES ('enqueue', now() + interval '3 days', 'followup.bumpup', $1, 95, $2)"
        " RETURNING id",
        {"lead_id": str(lead.lead_id), "bump_number": 1},
        lead.lead_id,
    )
    [job] = await bumpup_jobs(plat.pool)
    async with engage_worker(plat, engage_settings(base_env)):
        row = await finished_job(plat.pool, job["id"])
    assert row["status"] == "completed" and row["result"] == {"skipped": "lead replied"}
    assert await followups(plat.pool, lead) == []
    assert await plat.pool.fetchval("SELECT status FROM timers WHERE id = $1", timer) == (
        "cancelled"
    )


async def test_bumpups_stop_at_the_maximum(plat, base_env):
    """With BUMPUP_MAX unanswered bump-ups already sent, the handler sends no more."""
    lead, _ = await silent_lead(plat.pool)
    for days in (3.5, 3.2):
        await add_message(
            plat.pool,
            lead,
            "outbound",
            "Just checking in",
            purpose="followup",
            ago=timedelta(days=days),
        )
    await plat.pool.execute(
        'UPDATE leads SET attributes = \'{"followup": {"count": 2}}\' WHERE id = $1',
        lead.lead_id,
    )
    async with engage_worker(plat, engage_settings(base_env, bumpup_max=2)):
        job = await plat.bus.enqueue_job(
            "followup.bumpup",
            BumpupParams(lead_id=lead.lead_id, bump_number=3),
            lead_id=lead.lead_id,
        )
        row = await finished_job(plat.pool, job.id)
    assert row["result"]["skipped"].startswith("2 bump-ups already unanswered")
    assert len(await followups(plat.pool, lead)) == 2


async def test_bumpup_is_written_by_the_model_when_one_is_configured(plat, base_env):
    """With a model configured the bump-up text comes from the model, prompted with the
    company's system prompt and the conversation, and passes the guards."""
    lead, _ = await silent_lead(plat.pool)
    async with FakeOpenAI(api_key=KEY) as server:
        server.script_chat(Content("Hi Asha! <b>Still</b> keen on that free roof survey?"))
        settings = engage_settings(base_env, openai_api_key=KEY, openai_base_url=server.base_url)
        job = await plat.bus.enqueue_job(
            "followup.bumpup",
            BumpupParams(lead_id=lead.lead_id, bump_number=1),
            lead_id=lead.lead_id,
        )
        async with engage_worker(plat, settings):
            row = await finished_job(plat.pool, job.id)
        [chat] = server.answered_chats()
    assert row["status"] == "completed", row["last_error"]
    messages = chat.body["messages"]
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert "follow-up number 1" in messages[1]["content"]
    assert "[us] Yes! Want a free roof survey?" in messages[-1]["content"]
    [sent] = await followups(plat.pool, lead)
    assert sent["body"] == "Hi Asha! Still keen on that free roof survey?"
    assert sent["meta"]["ai"]["responder"] == "openai"
    assert sent["meta"]["ai"]["completion_tokens"] == chat.usage["completion_tokens"]
