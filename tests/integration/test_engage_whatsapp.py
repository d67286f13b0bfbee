"""Engage on WhatsApp Cloud's own cases, with its real handlers in an in-process worker against
real NATS and PostgreSQL: group messages, username (BSUID) leads and replies to edits."""

from __future__ import annotations

import pytest

from shvya_common.contracts import EngageParams
from shvya_engage.repository import EngageRepository
from tests.integration.engage_helpers import (
    Lead,
    add_message,
    engage_settings,
    engage_worker,
    enqueue_engage,
    finished_job,
    seed_lead,
)

pytestmark = pytest.mark.integration

BSUID = "US.13491208655302741918"


async def test_group_message_is_never_answered_privately(plat, base_env):
    """A message filed from a WhatsApp group completes without a reply to its sender."""
    lead = await seed_lead(plat.pool)
    message = await add_message(plat.pool, lead, "inbound", "Hi all, what does it cost?")
    await plat.pool.execute(
        'UPDATE messages SET meta = meta || \'{"group_id": "G7"}\' WHERE id = $1', message
    )
    async with engage_worker(plat, engage_settings(base_env)):
        job = await finished_job(plat.pool, await enqueue_engage(plat, lead, message))
    assert job["status"] == "completed" and job["result"] == {"skipped": "group message"}
    assert (
        await plat.pool.fetchval("SELECT count(*) FROM messages WHERE direction = 'outbound'") == 0
    )


async def test_a_message_deleted_before_its_reply_ran_is_not_answered(plat, base_env):
    """The customer deletes a message while its ai.engage waits: the job completes without a
    reply (the AI never answers the deletion's placeholder), and a deleted earlier message is
    left out of the next reply's history."""
    lead = await seed_lead(plat.pool)
    gone = await add_message(plat.pool, lead, "inbound", "my card number is 4111 1111")
    await plat.pool.execute(
        "UPDATE messages SET deleted_at = now(), body = '[Message deleted by the customer]'"
        " WHERE id = $1",
        gone,
    )
    async with engage_worker(plat, engage_settings(base_env)):
        job = await finished_job(plat.pool, await enqueue_engage(plat, lead, gone))
        assert job["status"] == "completed" and job["result"] == {
            "skipped": "deleted by the customer"
        }
        assert (
            await plat.pool.fetchval("SELECT count(*) FROM messages WHERE direction = 'outbound'")
            == 0
        )
        asked = await add_message(plat.pool, lead, "inbound", "Do you ship to Lisbon?")
        job = await finished_job(plat.pool, await enqueue_engage(plat, lead, asked))
    assert job["status"] == "completed", job["last_error"]
    repo = EngageRepository(plat.pool)
    loaded = await repo.load_reply(lead.lead_id, asked, 20, "reply:none", 0.0)
    assert loaded.context is not None
    assert [t.body for t in loaded.context.history] == []


async def test_username_lead_is_answered_by_business_scoped_user_id(plat, base_env):
    """A lead with a BSUID and no phone number gets its reply addressed to the BSUID."""
    seeded = await seed_lead(plat.pool)
    lead_id = await plat.pool.fetchval(
        "INSERT INTO leads (company_id, wa_user_id, contact_name) VALUES ($1, $2, 'Neo')"
        " RETURNING id",
        seeded.company_id,
        BSUID,
    )
    lead = Lead(seeded.company_id, lead_id)
    message = await add_message(plat.pool, lead, "inbound", "How much is the Home plan?")
    async with engage_worker(plat, engage_settings(base_env)):
        job = await finished_job(plat.pool, await enqueue_engage(plat, lead, message))
    assert job["status"] == "completed", job["last_error"]
    reply = await plat.pool.fetchrow(
        "SELECT recipient, channel FROM messages WHERE reply_to_id = $1", message
    )
    assert (reply["recipient"], reply["channel"]) == (BSUID, "whatsapp_cloud")


async def test_an_edit_answered_again_gets_its_own_reply(plat, base_env):
    """An ai.engage for the first edit of an answered message writes a second, separate reply."""
    lead = await seed_lead(plat.pool)
    message = await add_message(plat.pool, lead, "inbound", "Price for 2 kW?")
    async with engage_worker(plat, engage_settings(base_env)):
        await finished_job(plat.pool, await enqueue_engage(plat, lead, message))
        await plat.pool.execute(
            "UPDATE messages SET body = 'Price for 3 kW?', provider_message_id = 'wamid.q'"
            " WHERE id = $1",
            message,
        )
        edit = await plat.bus.enqueue_job(
            "ai.engage",
            EngageParams(lead_id=lead.lead_id, message_id=message, revision=1),
            company_id=lead.company_id,
            lead_id=lead.lead_id,
        )
        job = await finished_job(plat.pool, edit.id)
    assert job["status"] == "completed", job["last_error"]
    keys = await plat.pool.fetch(
        "SELECT send_key FROM messages WHERE reply_to_id = $1 ORDER BY created_at", message
    )
    assert [k["send_key"] for k in keys] == [f"reply:{message}", f"reply:{message}:edit:1"]
