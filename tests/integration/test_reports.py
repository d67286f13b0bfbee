"""Each report on a small known dataset, through the API: computed on first read, served from
report_caches after that with the time it was computed, recomputed on request."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from tests.integration.campaign_support import (
    as_company,
    ingest_client,
    make_company,
    make_leads,
)

pytestmark = pytest.mark.integration

KOLKATA = ZoneInfo("Asia/Kolkata")


async def pipeline(pool: asyncpg.Pool, company: uuid.UUID) -> dict[str, uuid.UUID]:
    pipe = await pool.fetchval(
        "INSERT INTO pipelines (company_id, name, is_default) VALUES ($1, 'Sales', true)"
        " RETURNING id",
        company,
    )
    stages = {}
    for position, name in enumerate(["New", "Contacted", "Qualified", "Won"], start=1):
        stages[name] = await pool.fetchval(
            "INSERT INTO stages (pipeline_id, name, position) VALUES ($1, $2, $3) RETURNING id",
            pipe,
            name,
            position,
        )
    return stages


async def message(
    pool: asyncpg.Pool,
    company: uuid.UUID,
    lead: uuid.UUID,
    direction: str,
    channel: str,
    at: datetime,
    *,
    sent_after: float | None = None,
    status: str | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    await pool.execute(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, status, meta,"
        " created_at, sent_at) VALUES ($1, $2, $3, $4, 'x', $5, $6, $7, $8)",
        company,
        lead,
        direction,
        channel,
        status or ("received" if direction == "inbound" else "sent"),
        meta or ({"purpose": "reply"} if direction == "outbound" else {}),
        at,
        at + timedelta(seconds=sent_after) if sent_after is not None else None,
    )


@pytest.fixture
async def dataset(plat) -> dict[str, Any]:
    """Ten staged leads and one without a stage; five conversation turns (four answered in
    10, 30, 100 and 20 s), a campaign send, a dead send and a message from 40 days ago."""
    pool = plat.pool
    company = await make_company(pool, timezone="Asia/Kolkata")
    stages = await pipeline(pool, company)
    leads = await make_leads(pool, company, [f"l{i}@example.org" for i in range(11)])
    placement = ["New"] * 4 + ["Contacted"] * 3 + ["Qualified"] * 2 + ["Won"]
    for lead, stage in zip(leads, placement, strict=False):
        await pool.execute("UPDATE leads SET stage_id = $2 WHERE id = $1", lead, stages[stage])
    a, b, c, d, e = leads[:5]
    base = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)
    ai_offline = {"purpose": "reply", "ai": {"responder": "offline"}}
    ai_model = {"purpose": "reply", "ai": {"responder": "openai", "model": "gpt-4o-mini"}}
    wa, email = "whatsapp_cloud", "email"
    days: dict[str, dict[str, int]] = {}

    async def add(lead: uuid.UUID, direction: str, channel: str, seconds: float, **kw: Any) -> None:
        at = base + timedelta(seconds=seconds)
        await message(pool, company, lead, direction, channel, at, **kw)
        if kw.get("status") != "dlq" and seconds > -7 * 86400:
            day = days.setdefault(at.astimezone(KOLKATA).date().isoformat(), {"in": 0, "out": 0})
            day["in" if direction == "inbound" else "out"] += 1

    await add(a, "inbound", wa, 0)
    await add(a, "outbound", wa, 5, sent_after=5, meta=ai_offline)  # answered in 10 s
    await add(a, "inbound", wa, 60)
    await add(a, "inbound", wa, 70)  # the same turn
    await add(a, "outbound", wa, 80, sent_after=10, meta=ai_offline)  # 30 s after 60
    await add(b, "inbound", email, 72_000)
    await add(b, "outbound", email, 72_040, sent_after=60)  # a person, in 100 s
    await add(b, "outbound", email, 75_600, status="logged", meta={"purpose": "marketing"})
    await add(c, "inbound", email, 75_600)  # never answered
    await add(c, "outbound", email, 79_200, status="dlq")
    await add(d, "inbound", wa, 108_000)
    await add(d, "outbound", wa, 108_001, sent_after=19, meta=ai_model)  # 20 s
    await add(e, "inbound", wa, -38 * 86400)  # outside every period
    return {"company": company, "days": days}


def report_url(company: uuid.UUID, name: str) -> str:
    return as_company(company, f"/v1/reports/{name}")


async def test_the_funnel_counts_leads_per_stage_and_conversion(plat, base_env, dataset):
    """Leads per stage in order, the share that reached each stage and the conversion from the
    stage before; computed on first read, then served from the cache with its time."""
    company = dataset["company"]
    async with ingest_client(base_env) as client:
        first = await client.get(report_url(company, "funnel"))
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["cached"] is False and body["key"] == "funnel"
        (sales,) = body["data"]["pipelines"]
        assert [(s["stage"], s["leads"], s["reached"]) for s in sales["stages"]] == [
            ("New", 4, 10),
            ("Contacted", 3, 6),
            ("Qualified", 2, 3),
            ("Won", 1, 1),
        ]
        assert [s["conversion_from_previous"] for s in sales["stages"]] == [None, 0.6, 0.5, 0.3333]
        assert [s["reached_share"] for s in sales["stages"]] == [1.0, 0.6, 0.3, 0.1]
        assert sales["leads"] == 10 and sales["overall_conversion"] == 0.1
        assert body["data"]["leads_without_stage"] == 1
        again = (await client.get(report_url(company, "funnel"))).json()
        assert again["cached"] is True and again["computed_at"] == body["computed_at"]
        fresh = (await client.get(report_url(company, "funnel"), params={"refresh": "true"})).json()
        assert fresh["cached"] is False and fresh["computed_at"] > body["computed_at"]
        listed = (await client.get(as_company(company, "/v1/reports"))).json()
        assert list(listed["cached"]) == ["funnel"]
        assert (await client.get(report_url(company, "churn"))).status_code == 404
        # The operator's token is no company's key: reports need one.
        assert (await client.get("/v1/reports/funnel")).status_code == 403


async def test_response_times_are_first_replies_per_turn(plat, base_env, dataset):
    """Turns answered in 10, 30, 100 and 20 s and one unanswered give p50 25 s, p90 79 s;
    per channel too; marketing and dead sends are not replies."""
    async with ingest_client(base_env) as client:
        data = (await client.get(report_url(dataset["company"], "response_times"))).json()["data"]
    assert (data["turns"], data["answered"], data["unanswered"]) == (5, 4, 1)
    assert (data["p50_seconds"], data["p90_seconds"], data["mean_seconds"]) == (25.0, 79.0, 40.0)
    by_channel = {c["channel"]: c for c in data["channels"]}
    assert (
        by_channel["whatsapp_cloud"]["p50_seconds"],
        by_channel["whatsapp_cloud"]["p90_seconds"],
    ) == (20.0, 28.0)
    assert (by_channel["email"]["turns"], by_channel["email"]["unanswered"]) == (2, 1)
    assert data["days"] == 30


async def test_volumes_count_messages_per_day_and_channel(plat, base_env, dataset):
    """Messages in and out per day on the company's calendar and per channel; a dead send and
    a message older than the period are left out."""
    async with ingest_client(base_env) as client:
        body = (
            await client.get(report_url(dataset["company"], "volumes"), params={"days": 7})
        ).json()
    data = body["data"]
    assert body["key"] == "volumes:7d" and data["timezone"] == "Asia/Kolkata"
    assert (data["inbound"], data["outbound"]) == (6, 5)
    assert data["channels"] == {
        "email": {"inbound": 2, "outbound": 2},
        "whatsapp_cloud": {"inbound": 4, "outbound": 3},
    }
    assert {d["day"]: {"in": d["inbound"], "out": d["outbound"]} for d in data["days"]} == dataset[
        "days"
    ]


async def test_ai_and_human_replies_are_told_apart(plat, base_env, dataset):
    """Replies that left are the AI's (by responder) or a person's, per channel; a campaign
    send is neither."""
    async with ingest_client(base_env) as client:
        data = (await client.get(report_url(dataset["company"], "ai_vs_human"))).json()["data"]
    assert (data["ai"], data["human"], data["ai_share"]) == (3, 1, 0.75)
    assert data["ai_by_responder"] == {"openai": 1, "offline": 2}
    assert data["channels"] == [
        {"channel": "email", "ai": 0, "human": 1},
        {"channel": "whatsapp_cloud", "ai": 3, "human": 0},
    ]
