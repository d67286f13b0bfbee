"""The README's campaign walk-through across the four service processes: leads from inbound
email, a campaign created, previewed, sent and counted, the funnel report read, and a
schedule created, all over HTTP with the company's own admin key."""

from __future__ import annotations

import httpx
import pytest

from tests.support import eventually

pytestmark = pytest.mark.e2e

TEMPLATE = {
    "subject": "{{ lead.first_name }}, our spring offer",
    "text": "Hi {{ lead.first_name }},\n\nSee https://example.com/spring",
    "html": "<p>Hi {{ lead.first_name }},</p>"
    '<p><a href="https://example.com/spring">Our offer</a></p>',
}


async def test_readme_campaign_walkthrough(services, admin_token):
    """As the README shows it: two inbound email leads, a campaign previewed and sent to both
    (sent, or deferred by email quiet hours), its counts, the funnel and a schedule."""
    for name in ("ingest", "engage", "dispatch", "scheduler"):
        services.start(name, CAMPAIGN_TICK_SECONDS="0.5", SCHEDULE_TICK_SECONDS="0.5")
    for proc in services.procs.values():
        await proc.wait_ready()
    operator = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=services.url, headers=operator, timeout=30) as client:
        made = await client.post("/v1/companies", json={"name": "Acme Solar"})
        assert made.status_code == 201, made.text
        client.headers["Authorization"] = f"Bearer {made.json()['admin_key']['key']}"
        for address, name in (("riya@example.org", "Riya Sen"), ("tom@example.org", "Tom Berg")):
            body = {
                "phone_number": address,
                "contact_name": name,
                "message_text": "Hi",
                "channel": "email",
            }
            assert (await client.post("/inbound-message", json=body)).status_code == 200
        base = "/v1"
        created = await client.post(
            f"{base}/campaigns", json={"name": "Spring offer", "template": TEMPLATE}
        )
        assert created.status_code == 201, created.text
        assert created.json()["audience_size"] == 2
        cid = created.json()["id"]
        preview = await client.post(
            f"{base}/campaigns/{cid}/preview", json={"email": "riya@example.org"}
        )
        assert preview.status_code == 200, preview.text
        assert preview.json()["subject"] == "Riya, our spring offer"
        assert preview.json()["text"].startswith("Hi Riya,")
        sent = await client.post(f"{base}/campaigns/{cid}/send")
        assert sent.status_code == 202 and sent.json()["status"] == "sending"

        async def counts():
            return (await client.get(f"{base}/campaigns/{cid}/counts")).json()

        final = await eventually(
            counts, lambda c: c["recipients"] == 2 and c["sent"] + c["deferred"] == 2
        )
        assert final["pending"] == final["suppressed"] == final["failed"] == 0
        funnel = (await client.get(f"{base}/reports/funnel")).json()
        (sales,) = funnel["data"]["pipelines"]
        assert sales["stages"][0] == {
            "stage": "New",
            "position": 1,
            "leads": 2,
            "reached": 2,
            "reached_share": 1.0,
            "conversion_from_previous": None,
        }
        assert funnel["computed_at"]
        schedule = await client.post(
            f"{base}/schedules", json={"name": "Reports", "kind": "reports", "cron": "0 * * * *"}
        )
        assert schedule.status_code == 201, schedule.text
        assert len(schedule.json()["next_runs_local"]) == 3
