"""The AI engine across the four service processes, with engage's real `openai` client pointed at
the local OpenAI-wire server: a configured model answers, a quiet conversation is summarised by
the scheduler's sweep, a silent lead gets one bump-up, and the admin API asks for a summary."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.keys import bearer, make_key
from tests.support import eventually

pytestmark = pytest.mark.e2e

KEY = "sk-test-e2e"
SYSTEM_PROMPT = "You are Sol, Acme Solar's assistant. Answer briefly."
ANSWER = "Our Home plan costs $99 per month, installation included."
BUMP = "Hi Ravi! Still thinking about the Home plan? Happy to help."
# About 2.6 s: long enough for the reply to go out first, short enough for a test.
SILENT_DAYS = "0.00003"


def model(body: dict[str, Any]) -> str:
    systems = " ".join(m["content"] for m in body["messages"] if m["role"] == "system")
    return BUMP if "follow-up message" in systems else ANSWER


async def test_model_reply_quiet_summary_bumpup_and_summary_api(services, db_url):
    """With a key, replies come from the company's model; the sweeps summarise the quiet
    conversation and bump the silent lead once; the admin API summary lands on the lead."""
    async with FakeOpenAI(api_key=KEY) as server:
        server.chat_responder = model
        ai = {
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": server.base_url,
            "EMBEDDINGS_PROVIDER": "none",
            "BUMPUP_SILENT_DAYS": SILENT_DAYS,
            "BUMPUP_MAX": "1",
        }
        services.start("ingest")
        services.start("engage", **ai)
        services.start("dispatch")
        services.start(
            "scheduler",
            SWEEP_INTERVAL_SECONDS="0.5",
            SUMMARY_QUIET_MINUTES="0.02",
            BUMPUP_SILENT_DAYS=SILENT_DAYS,
            BUMPUP_MAX="1",
        )
        for proc in services.procs.values():
            await proc.wait_ready()
        conn = await asyncpg.connect(db_url)
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        try:
            company = await conn.fetchval("SELECT id FROM companies WHERE is_default")
            admin = bearer(await make_key(db_url, company))
            async with httpx.AsyncClient(base_url=services.url, headers=admin) as client:
                configured = await client.put(
                    "/v1/ai-model",
                    json={
                        "model": "gpt-acme",
                        "temperature": 0.2,
                        "max_tokens": 200,
                        "system_prompt": SYSTEM_PROMPT,
                    },
                )
                assert configured.status_code == 200, configured.text
                inbound = await client.post(
                    "/inbound-message",
                    json={
                        "phone_number": "+15550142",
                        "contact_name": "Ravi Kumar",
                        "message_text": "How much is the Home plan?",
                        "channel": "whatsapp_cloud",
                    },
                )
                assert inbound.status_code == 200, inbound.text
                lead = await conn.fetchval("SELECT id FROM leads")

                reply = await eventually(
                    lambda: conn.fetchrow(
                        "SELECT body, meta FROM messages WHERE direction = 'outbound'"
                        " AND meta->>'purpose' = 'reply' AND status = 'logged'"
                    )
                )
                assert reply["body"] == ANSWER
                assert reply["meta"]["ai"]["model"] == "gpt-acme"
                first = server.answered_chats()[0].body
                assert first["model"] == "gpt-acme" and first["max_tokens"] == 200
                assert first["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}

                quiet = await eventually(
                    lambda: conn.fetchval(
                        "SELECT attributes->'summary' FROM leads WHERE id = $1", lead
                    ),
                    timeout=60,
                )
                assert quiet["reason"] == "quiet" and quiet["responder"] == "openai"

                bump = await eventually(
                    lambda: conn.fetchrow(
                        "SELECT body, priority, send_key FROM messages"
                        " WHERE meta->>'purpose' = 'followup' AND status = 'logged'"
                    ),
                    timeout=60,
                )
                assert bump["body"] == BUMP and bump["priority"] == 95
                assert bump["send_key"] == f"bumpup:{lead}:1"

                asked = await client.post(f"/v1/leads/{lead}/summary")
                assert asked.status_code == 202, asked.text
                await eventually(
                    lambda: conn.fetchval(
                        "SELECT status FROM jobs WHERE id = $1", asked.json()["job_id"]
                    ),
                    lambda status: status == "completed",
                )
                shown = (await client.get(f"/v1/leads/{lead}")).json()
                assert shown["summary"]["reason"] == "api"
                assert shown["attributes"]["followup"]["count"] == 1
        finally:
            await conn.close()
    followups = [r for r in server.answered_chats() if "follow-up" in str(r.body["messages"])]
    assert len(followups) == 1, "BUMPUP_MAX=1: exactly one bump-up was written"
