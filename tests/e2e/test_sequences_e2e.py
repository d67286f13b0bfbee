"""The README's sequence walk-through across the four service processes, with curl's requests:
a lead writes in, a sequence is created and the lead enrolled by phone number, its steps go
out through dispatch, and the lead's reply stops the rest."""

from __future__ import annotations

import httpx
import pytest

from tests.support import eventually

pytestmark = pytest.mark.e2e

PHONE = "+1234567890"


@pytest.fixture
async def platform(services):
    """The four services; WhatsApp's 15 s pacing per recipient is shortened for the test."""
    for name in ("ingest", "engage", "dispatch", "scheduler"):
        services.start(name, POLICY_WHATSAPP_CLOUD_MIN_GAP_SECONDS="0.2")
    for proc in list(services.procs.values()):
        await proc.wait_ready()
    return services


async def test_sequence_steps_go_out_and_stop_when_the_lead_replies(platform, admin_token):
    """Steps with a compressed wait go out one after the other through dispatch, and the
    lead's reply stops the enrolment before its last step: the sequence never sends again."""
    running = platform
    auth = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=running.url, headers=auth, timeout=10) as client:
        hello = {
            "phone_number": PHONE,
            "contact_name": "Test User",
            "message_text": "Hi, I'm interested in solar panels",
            "channel": "whatsapp_cloud",
        }
        assert (await client.post("/inbound-message", json=hello)).status_code == 200
        companies = (await client.get("/admin/companies")).json()
        company = next(c["id"] for c in companies if c["is_default"])
        base = f"/admin/companies/{company}/sequences"
        created = await client.post(
            base,
            json={
                "name": "Solar follow-up",
                "channel": "whatsapp_cloud",
                "steps": [
                    {"kind": "send", "text": "Hi {{ lead.first_name }}, thanks for your interest!"},
                    {"kind": "wait", "seconds": 1},
                    {"kind": "send", "text": "Would a free roof survey help?"},
                    {"kind": "wait", "seconds": 3600},
                    {"kind": "send", "text": "Last call for this month's offer."},
                ],
            },
        )
        assert created.status_code == 201, created.text
        sequence = created.json()["id"]
        enrolled = await client.post(
            f"{base}/{sequence}/enrolments", json={"filter": {"phone_number": PHONE}}
        )
        assert enrolled.status_code == 201, enrolled.text
        enrolment = enrolled.json()["enrolments"][0]["enrolment_id"]

        async def state():
            return (await client.get(f"{base}/{sequence}/enrolments/{enrolment}")).json()

        def sent(detail):
            return [h["message_status"] for h in detail["history"] if h["action"] == "send"]

        waiting = await eventually(state, lambda d: sent(d) == ["logged", "logged"], timeout=60)
        assert waiting["status"] == "active" and waiting["current_step"]["key"] == "step-5"
        reply = {**hello, "message_text": "Yes please, book the survey"}
        assert (await client.post("/inbound-message", json=reply)).status_code == 200
        stopped = await eventually(state, lambda d: d["status"] == "stopped", timeout=60)
        assert stopped["stop_reason"] == "replied"
        assert sent(stopped) == ["logged", "logged"]
        # The AI answered both inbound messages; the sequence sent two of its three texts.
        stats = await eventually(
            lambda: client.get("/queue/stats"),
            lambda r: r.json()["sends"].get("logged") == 4,
            timeout=60,
        )
        assert stats.json()["dlq"] == 0
