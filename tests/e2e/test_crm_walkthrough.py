"""The README's walkthrough as a test, with every service running: the operator creates a
company and its admin key; an ingest key posts a message; the lead is listed, moved to
Qualified and its conversation read; an agent takes it over (the AI stops answering), replies by
hand through dispatch, and hands it back (the AI answers again). Another company sees nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.keys import bearer
from tests.support import eventually

pytestmark = pytest.mark.e2e


async def test_a_company_runs_its_crm_with_its_own_keys(running):
    """The walkthrough works end to end, and the other company's key sees none of it."""
    operator = bearer(running.base_env["ADMIN_TOKEN"])
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
        made = (await client.post("/v1/companies", json={"name": "Acme"}, headers=operator)).json()
        admin = bearer(made["admin_key"]["key"])
        other = (await client.post("/v1/companies", json={"name": "Beta"}, headers=operator)).json()
        stranger = bearer(other["admin_key"]["key"])
        ingest_key = (
            await client.post(
                "/v1/api-keys", json={"name": "site", "role": "ingest"}, headers=admin
            )
        ).json()["key"]
        agent = bearer(
            (
                await client.post(
                    "/v1/api-keys", json={"name": "rita", "role": "agent"}, headers=admin
                )
            ).json()["key"]
        )
        body = {
            "phone_number": "+4915112345678",
            "contact_name": "Ana Lopez",
            "message_text": "Hi, what does the annual plan cost?",
            "channel": "whatsapp_cloud",
        }
        filed = await client.post("/inbound-message", json=body, headers=bearer(ingest_key))
        assert filed.status_code == 200, filed.text

        leads = (await client.get("/v1/leads", headers=agent)).json()["items"]
        assert [lead["contact_name"] for lead in leads] == ["Ana Lopez"]
        lead_id = leads[0]["id"]
        moved = await client.post(
            f"/v1/leads/{lead_id}/stage", json={"stage": "Qualified"}, headers=agent
        )
        assert moved.status_code == 200 and moved.json()["stage"] == "Qualified"

        async def thread() -> list[dict]:
            answer = await client.get(f"/v1/leads/{lead_id}/messages", headers=agent)
            return list(answer.json()["items"])

        first = await eventually(thread, lambda m: len(m) == 2, timeout=60)
        assert first[1]["direction"] == "outbound" and first[1]["responder"] == "offline"

        taken = await client.post(f"/v1/leads/{lead_id}/handoff", headers=agent)
        assert taken.status_code == 200 and taken.json()["handoff_by"].startswith("key:")
        again = await client.post(
            "/inbound-message",
            json={**body, "message_text": "Can I talk to a person?"},
            headers=bearer(ingest_key),
        )
        assert again.status_code == 200
        stats = await eventually(
            lambda: client.get("/queue/stats", headers=operator),
            lambda r: r.json()["completed"] >= 2 and r.json()["processing"] == 0,
            timeout=60,
        )
        assert stats.status_code == 200
        assert len(await thread()) == 3  # the AI did not answer while an agent has the lead

        sent = await client.post(
            f"/v1/leads/{lead_id}/messages",
            json={"text": "Hi Ana, Rita here. The annual plan is 99 EUR."},
            headers={**agent, "Idempotency-Key": "rita-1"},
        )
        assert sent.status_code == 202, sent.text
        replay = await client.post(
            f"/v1/leads/{lead_id}/messages",
            json={"text": "Hi Ana, Rita here. The annual plan is 99 EUR."},
            headers={**agent, "Idempotency-Key": "rita-1"},
        )
        assert replay.json()["message_id"] == sent.json()["message_id"]
        by_hand = await eventually(
            thread, lambda m: len(m) == 4 and m[3]["status"] == "logged", timeout=60
        )
        assert by_hand[3]["purpose"] == "agent" and by_hand[3]["responder"] is None

        released = await client.delete(f"/v1/leads/{lead_id}/handoff", headers=agent)
        assert released.json()["handoff_at"] is None
        await client.post(
            "/inbound-message",
            json={**body, "message_text": "Thanks! And the monthly one?"},
            headers=bearer(ingest_key),
        )
        answered = await eventually(thread, lambda m: len(m) == 6, timeout=60)
        assert answered[5]["direction"] == "outbound" and answered[5]["responder"] == "offline"

        events = (await client.get("/v1/events", headers=agent, params={"lead_id": lead_id})).json()
        types = [e["type"] for e in events["items"]]
        for kind in ("lead.stage_changed", "lead.handoff_started", "lead.handoff_ended"):
            assert kind in types

        assert (await client.get("/v1/leads", headers=stranger)).json()["items"] == []
        assert (await client.get(f"/v1/leads/{lead_id}", headers=stranger)).status_code == 404
        peek = await client.get(f"/v1/leads/{lead_id}/messages", headers=stranger)
        assert peek.status_code == 404
