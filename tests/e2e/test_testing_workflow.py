"""The original's "Testing Workflow", end to end across four service processes."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.support import eventually

pytestmark = pytest.mark.e2e

CURL_BODY = {
    "phone_number": "+1234567890",
    "contact_name": "Test User",
    "message_text": "Hello",
    "channel": "whatsapp_cloud",
}


async def test_curl_example_reaches_completed_and_stores_reply(running, db_url):
    """POSTing the original curl example yields completed=1 and a stored outbound reply."""
    async with httpx.AsyncClient(base_url=running.url) as client:
        response = await client.post("/inbound-message", json=CURL_BODY)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "ok" and body["message_id"] and body["job_id"]

        async def stats():
            return (await client.get("/queue/stats")).json()

        final = await eventually(
            stats, lambda s: s["completed"] == 1 and s["sends"].get("logged") == 1
        )
        original = {k: final[k] for k in ("queued", "processing", "completed", "failed", "dlq")}
        assert original == {"queued": 0, "processing": 0, "completed": 1, "failed": 0, "dlq": 0}
        assert final["total"] == 1 and final["orphaned"] == 0
        assert final["sends"] == {"logged": 1}

    conn = await asyncpg.connect(db_url)
    try:
        reply = await eventually(
            lambda: conn.fetchrow(
                "SELECT body, status, channel, reply_to_id::text AS reply_to FROM messages"
                " WHERE direction = 'outbound' AND status = 'logged'"
            )
        )
        assert reply["reply_to"] == body["message_id"]
        assert reply["channel"] == "whatsapp_cloud"
        assert "Test" in reply["body"]
        lead = await conn.fetchrow("SELECT phone_e164, contact_name FROM leads")
        assert dict(lead) == {"phone_e164": "+1234567890", "contact_name": "Test User"}
        stages = await conn.fetch(
            "SELECT s.name FROM stages s JOIN pipelines p ON p.id = s.pipeline_id ORDER BY position"
        )
        assert [s["name"] for s in stages] == [
            "New",
            "Contacted",
            "Qualified",
            "Proposal",
            "Closed",
        ]
        events = {r["type"] for r in await conn.fetch("SELECT type FROM events")}
        assert {"message.received", "ai.reply_generated", "message.sent"} <= events
    finally:
        await conn.close()
