"""ai.summary: asked for through ingest's admin API or by the quiet-conversation sweep, answered
with JSON-schema structured output, validated, retried, dead-lettered, stored on the lead."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest

from shvya_common.contracts import SummaryParams
from shvya_ingest.app import create_app
from shvya_ingest.settings import IngestSettings
from shvya_scheduler.sweeps import sweep_quiet_summaries
from tests.fakes.openai_server import Content, FakeOpenAI
from tests.integration.engage_helpers import (
    add_message,
    engage_settings,
    engage_worker,
    finished_job,
    seed_lead,
)
from tests.keys import bearer, make_key
from tests.support import eventually

pytestmark = pytest.mark.integration

KEY = "sk-test-summary"
VALID = {
    "summary": "Asha wants the Home plan for a flat roof.",
    "key_points": ["flat roof", "budget $100/month"],
    "sentiment": "positive",
    "next_action": "Book a roof survey.",
}


@pytest.fixture
async def server():
    async with FakeOpenAI(api_key=KEY) as fake:
        yield fake


def online(base_env, server):
    return engage_settings(base_env, openai_api_key=KEY, openai_base_url=server.base_url)


@asynccontextmanager
async def ingest_client(base_env):
    app = create_app(IngestSettings(**{k.lower(): v for k, v in base_env.items()}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client


async def conversation(pool, **lead_args):
    lead = await seed_lead(pool, **lead_args)
    await add_message(
        pool, lead, "inbound", "Hi! I love the idea of solar.", ago=timedelta(hours=3)
    )
    await add_message(
        pool, lead, "outbound", "Great! What kind of roof do you have?", ago=timedelta(hours=3)
    )
    last = await add_message(
        pool, lead, "inbound", "A flat roof. What is the price?", ago=timedelta(hours=2)
    )
    return lead, last


async def summary_of(pool, lead):
    return await pool.fetchval(
        "SELECT attributes->'summary' FROM leads WHERE id = $1", lead.lead_id
    )


async def test_admin_api_requests_a_summary_stored_on_the_lead(plat, base_env, server):
    """POST /v1/leads/{id}/summary enqueues ai.summary; the validated JSON lands in
    attributes.summary and GET /v1/leads/{id} shows it."""
    lead, last = await conversation(plat.pool)
    server.script_chat(Content(json.dumps(VALID)))
    headers = bearer(await make_key(plat.pool, lead.company_id, "agent"))
    async with ingest_client(base_env) as client, engage_worker(plat, online(base_env, server)):
        denied = await client.post(f"/v1/leads/{lead.lead_id}/summary")
        assert denied.status_code == 401
        missing = await client.post(
            "/v1/leads/00000000-0000-0000-0000-000000000000/summary", headers=headers
        )
        assert missing.status_code == 404
        response = await client.post(f"/v1/leads/{lead.lead_id}/summary", headers=headers)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["lead_id"] == str(lead.lead_id) and body["created"] is True
        job = await finished_job(plat.pool, body["job_id"])
        assert job["status"] == "completed", job["last_error"]
        shown = (await client.get(f"/v1/leads/{lead.lead_id}", headers=headers)).json()

    [chat] = server.answered_chats()
    assert chat.body["response_format"]["type"] == "json_schema"
    assert chat.body["response_format"]["json_schema"]["strict"] is True
    transcript = chat.body["messages"][-1]["content"]
    assert "[lead] A flat roof. What is the price?" in transcript
    assert "[us] Great! What kind of roof do you have?" in transcript
    stored = await summary_of(plat.pool, lead)
    assert {k: stored[k] for k in VALID} == VALID
    assert stored["responder"] == "openai" and stored["offline"] is False
    assert stored["reason"] == "api" and stored["last_message_id"] == str(last)
    assert shown["summary"] == stored and shown["stage"] == "Qualified"
    event = await plat.pool.fetchval(
        "SELECT payload FROM events WHERE lead_id = $1 AND type = 'lead.summary_updated'",
        lead.lead_id,
    )
    assert event["prompt_tokens"] == chat.usage["prompt_tokens"] > 0
    assert event["sentiment"] == "positive"


async def test_summary_that_fails_validation_is_retried(plat, base_env, server):
    """Output that does not validate is retried; the next, valid answer is stored."""
    lead, _ = await conversation(plat.pool)
    server.script_chat(Content('{"summary": "cut off'))
    async with engage_worker(plat, online(base_env, server)):
        job = await plat.bus.enqueue_job(
            "ai.summary", SummaryParams(lead_id=lead.lead_id), lead_id=lead.lead_id
        )
        row = await finished_job(plat.pool, job.id)
    assert row["status"] == "completed" and row["attempts"] == 2
    assert (await summary_of(plat.pool, lead))["sentiment"] == "positive"


async def test_summary_that_never_validates_is_dead_lettered(plat, base_env, server):
    """After the whole retry schedule of invalid output the job is dead-lettered, with the
    validation error as its reason, and the lead keeps no summary."""
    lead, _ = await conversation(plat.pool)
    settings = online(base_env, server)
    bad = Content('{"summary": "ok", "key_points": [], "sentiment": "ecstatic", "next_action": ""}')
    server.script_chat(*[bad] * settings.max_attempts)
    async with engage_worker(plat, settings):
        job = await plat.bus.enqueue_job(
            "ai.summary", SummaryParams(lead_id=lead.lead_id), lead_id=lead.lead_id
        )
        row = await finished_job(plat.pool, job.id)
    assert row["status"] == "dlq" and row["attempts"] == settings.max_attempts
    assert "summary output did not validate" in row["last_error"]
    assert "sentiment" in row["last_error"] and "next_action" in row["last_error"]
    assert await summary_of(plat.pool, lead) is None
    assert len(server.answered_chats()) == settings.max_attempts


async def test_offline_summary_is_extractive_and_labelled(plat, base_env):
    """Without a key the summary is the deterministic extractive one, labelled offline."""
    lead, _ = await conversation(plat.pool)
    async with engage_worker(plat, engage_settings(base_env)):
        job = await plat.bus.enqueue_job(
            "ai.summary", SummaryParams(lead_id=lead.lead_id), lead_id=lead.lead_id
        )
        assert (await finished_job(plat.pool, job.id))["status"] == "completed"
    stored = await summary_of(plat.pool, lead)
    assert stored["responder"] == "offline" and stored["offline"] is True
    assert stored["model"] is None
    assert stored["summary"].startswith("Asha Rao wrote 2 message(s) from the lead, 1 from us.")
    assert stored["sentiment"] == "positive"
    assert stored["next_action"] == "Answer the lead's latest message and send pricing details."


async def test_quiet_sweep_enqueues_one_summary_per_quiet_conversation(plat, base_env):
    """A conversation quiet past the threshold gets one ai.summary; a lively one gets none,
    and sweeping again (or after the summary is stored) enqueues nothing more."""
    quiet, last = await conversation(plat.pool)
    lively = await seed_lead(plat.pool, phone="+15550199")
    await add_message(plat.pool, lively, "inbound", "Still deciding", ago=timedelta(minutes=5))
    ancient = await seed_lead(plat.pool, phone="+15550198")
    await add_message(plat.pool, ancient, "inbound", "Hello", ago=timedelta(days=30))
    window = (timedelta(minutes=60), timedelta(hours=72))
    assert await sweep_quiet_summaries(plat.bus, *window, limit=100) == 1
    assert await sweep_quiet_summaries(plat.bus, *window, limit=100) == 0
    job = await plat.pool.fetchrow(
        "SELECT id, lead_id, task_params, idempotency_key FROM jobs WHERE task_name = 'ai.summary'"
    )
    assert job["lead_id"] == quiet.lead_id and job["task_params"]["reason"] == "quiet"
    assert job["idempotency_key"] == f"summary:{quiet.lead_id}:{last}"
    async with engage_worker(plat, engage_settings(base_env)):
        await finished_job(plat.pool, job["id"])
    await plat.pool.execute("DELETE FROM jobs")
    assert await sweep_quiet_summaries(plat.bus, *window, limit=100) == 0
    # A new message after the summary makes the conversation due again once it goes quiet.
    await add_message(plat.pool, quiet, "inbound", "Any discount?", ago=timedelta(minutes=90))
    assert await sweep_quiet_summaries(plat.bus, *window, limit=100) == 1
    rows = await eventually(
        lambda: plat.pool.fetch("SELECT lead_id FROM jobs WHERE task_name = 'ai.summary'")
    )
    assert [r["lead_id"] for r in rows] == [quiet.lead_id]
