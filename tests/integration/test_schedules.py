"""Recurring schedules against real PostgreSQL and NATS: created over the API with the next
firing on the company's clock, fired once per slot by concurrent scheduler passes, and doing
their work (reports, summaries, a campaign sent again to new matches)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from shvya_common.cron import next_fire
from shvya_scheduler.config import ScheduleConfig
from shvya_scheduler.schedules import fire_due_schedules
from tests.integration.campaign_support import (
    as_company,
    cplat_fixture,  # noqa: F401 (the `cplat` fixture)
    ingest_client,
    make_company,
    make_leads,
    recipient_statuses,
    scheduler_settings,
    scheduler_worker,
)
from tests.support import eventually

pytestmark = pytest.mark.integration

CONFIG = ScheduleConfig(tick_seconds=0.1, batch=10, summary_batch=50)


def schedules_url(company_id: uuid.UUID, *rest: object) -> str:
    return as_company(company_id, "/".join(["/v1/schedules", *map(str, rest)]))


async def make_due(plat: Any, schedule_id: str) -> datetime:
    """Move a schedule's next slot into the past, as if its time had come; returns the slot."""
    slot = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    await plat.pool.execute(
        "UPDATE schedules SET next_run_at = $2 WHERE id = $1", uuid.UUID(schedule_id), slot
    )
    return slot


def local_nine_after(zone: ZoneInfo, moment: datetime) -> datetime:
    """The first 09:00 on `zone`'s wall clock after `moment`, found with zoneinfo alone."""
    local = moment.astimezone(zone)
    day = local.date() if local.time() < time(9) else local.date() + timedelta(days=1)
    return datetime.combine(day, time(9), tzinfo=zone).astimezone(UTC)


async def test_schedules_in_two_zones_fire_at_their_own_nine_once_per_slot(cplat, base_env):
    """A daily 09:00 schedule in New York and one in Tokyo get next firings at each company's
    own 09:00; four concurrent passes fire each due slot once, and the next slot is the
    following local 09:00."""
    ny = await make_company(cplat.pool, name="NY", timezone="America/New_York")
    tokyo = await make_company(cplat.pool, name="Tokyo", timezone="Asia/Tokyo")
    async with ingest_client(base_env) as client:
        made = {}
        for company, zone in ((ny, "America/New_York"), (tokyo, "Asia/Tokyo")):
            before = datetime.now(UTC)
            response = await client.post(
                schedules_url(company),
                json={"name": "Daily reports", "kind": "reports", "cron": "0 9 * * *"},
            )
            assert response.status_code == 201, response.text
            body = response.json()
            assert body["timezone"] == zone
            first = datetime.fromisoformat(body["next_run_at"])
            assert first == local_nine_after(ZoneInfo(zone), before)
            assert [datetime.fromisoformat(t).time().hour for t in body["next_runs_local"]] == [
                9
            ] * 3
            made[company] = body["id"]
        slots = {c: await make_due(cplat, sid) for c, sid in made.items()}
        claimed = await asyncio.gather(*(fire_due_schedules(cplat.bus, CONFIG) for _ in range(4)))
        assert sum(claimed) == 2
        assert (
            sum(await asyncio.gather(*(fire_due_schedules(cplat.bus, CONFIG) for _ in range(2))))
            == 0
        )
        jobs = await cplat.pool.fetch(
            "SELECT company_id, idempotency_key FROM jobs WHERE task_name = 'report.refresh'"
        )
        assert sorted(r["company_id"] for r in jobs) == sorted(made)
        for company, zone in ((ny, "America/New_York"), (tokyo, "Asia/Tokyo")):
            body = (await client.get(schedules_url(company, made[company]))).json()
            assert body["runs"] == 1 and body["last_error"] is None
            assert datetime.fromisoformat(body["last_slot"]) == slots[company]
            following = datetime.fromisoformat(body["next_run_at"])
            assert following == next_fire("0 9 * * *", zone, after=datetime.now(UTC))
            assert following.astimezone(ZoneInfo(zone)).hour == 9
        # The same slot fired again (a replica that read it before the advance) adds nothing.
        await cplat.pool.execute(
            "UPDATE schedules SET next_run_at = last_slot WHERE id = $1", uuid.UUID(made[ny])
        )
        await fire_due_schedules(cplat.bus, CONFIG)
        assert (
            await cplat.pool.fetchval(
                "SELECT count(*) FROM jobs WHERE task_name = 'report.refresh'"
            )
            == 2
        )


async def test_a_reports_schedule_fills_the_cache_through_the_worker(cplat, base_env):
    """A due 'reports' schedule enqueues report.refresh, and the scheduler's worker fills
    report_caches with every report, each with its computed time."""
    company = await make_company(cplat.pool)
    async with ingest_client(base_env) as client:
        created = await client.post(
            schedules_url(company),
            json={
                "name": "Hourly",
                "kind": "reports",
                "cron": "@hourly",
                "reports": ["funnel", "volumes"],
                "days": 7,
            },
        )
        assert created.status_code == 201, created.text
        await make_due(cplat, created.json()["id"])
    async with scheduler_worker(cplat, scheduler_settings(base_env), timers=False):
        await fire_due_schedules(cplat.bus, CONFIG)
        rows = await eventually(
            lambda: cplat.pool.fetch(
                "SELECT report_key, computed_at FROM report_caches WHERE company_id = $1"
                " ORDER BY report_key",
                company,
            ),
            lambda rs: len(rs) == 2,
        )
    assert [r["report_key"] for r in rows] == ["funnel", "volumes:7d"]


async def test_a_summaries_schedule_queues_recently_active_leads_once(cplat, base_env):
    """A 'summaries' schedule enqueues ai.summary for leads active since its look-back, under
    the quiet sweep's key, skipping leads whose summary covers their last message."""
    company = await make_company(cplat.pool)
    active, summarised, old = await make_leads(
        cplat.pool, company, ["a@example.org", "b@example.org", "c@example.org"]
    )
    now = datetime.now(UTC)
    for lead, at in (
        (active, now - timedelta(hours=1)),
        (summarised, now),
        (old, now - timedelta(days=3)),
    ):
        message = await cplat.pool.fetchval(
            "INSERT INTO messages (company_id, lead_id, direction, channel, body, created_at)"
            " VALUES ($1, $2, 'inbound', 'email', 'hello', $3) RETURNING id",
            company,
            lead,
            at,
        )
        await cplat.pool.execute(
            "UPDATE leads SET last_inbound_at = $2, attributes = $3 WHERE id = $1",
            lead,
            at,
            {"summary": {"last_message_id": str(message)}} if lead == summarised else {},
        )
    async with ingest_client(base_env) as client:
        created = await client.post(
            schedules_url(company),
            json={"name": "Nightly", "kind": "summaries", "cron": "0 2 * * *"},
        )
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        await make_due(cplat, sid)
        await fire_due_schedules(cplat.bus, CONFIG)
        jobs = await cplat.pool.fetch(
            "SELECT lead_id, idempotency_key, task_params FROM jobs WHERE task_name = 'ai.summary'"
        )
        assert [r["lead_id"] for r in jobs] == [active]
        assert jobs[0]["idempotency_key"].startswith(f"summary:{active}:")
        assert jobs[0]["task_params"]["reason"] == "schedule"
        body = (await client.get(schedules_url(company, sid))).json()
        assert body["last_result"] == {"leads": 1, "enqueued": 1}


async def test_a_campaign_schedule_sends_again_to_new_matches_only(cplat, base_env):
    """A completed campaign's schedule adds the leads that match since, sends to them, and
    never mails an earlier recipient twice."""
    company = await make_company(cplat.pool)
    await make_leads(cplat.pool, company, [f"n{i}@example.org" for i in range(3)])
    sched = scheduler_settings(base_env, campaign_tick_seconds=0.1, campaign_rate_per_minute=60_000)
    async with ingest_client(base_env) as client:
        campaign = await client.post(
            as_company(company, "/v1/campaigns"),
            json={
                "name": "Welcome",
                "template": {"subject": "Welcome", "text": "Hi {{ lead.first_name }}"},
            },
        )
        cid = campaign.json()["id"]
        schedule = await client.post(
            schedules_url(company),
            json={
                "name": "Daily welcome",
                "kind": "campaign",
                "cron": "0 8 * * *",
                "campaign_id": cid,
            },
        )
        assert schedule.status_code == 201, schedule.text
        bad = await client.post(
            schedules_url(company),
            json={
                "name": "X",
                "kind": "campaign",
                "cron": "0 8 * * *",
                "campaign_id": str(uuid.uuid4()),
            },
        )
        assert bad.status_code == 404
        async with scheduler_worker(cplat, sched):
            assert (
                await client.post(as_company(company, f"/v1/campaigns/{cid}/send"))
            ).status_code == 202
            await eventually(
                lambda: client.get(as_company(company, f"/v1/campaigns/{cid}")),
                lambda r: r.json()["status"] == "completed",
            )
            await make_leads(cplat.pool, company, ["late1@example.org", "late2@example.org"])
            await make_due(cplat, schedule.json()["id"])
            await fire_due_schedules(cplat.bus, CONFIG)
            await eventually(
                lambda: recipient_statuses(cplat.pool, uuid.UUID(cid)),
                lambda s: s == {"requested": 5},
            )
            await eventually(
                lambda: client.get(as_company(company, f"/v1/campaigns/{cid}")),
                lambda r: r.json()["status"] == "completed",
            )
    sends = await cplat.pool.fetchval(
        "SELECT count(*) FROM messages WHERE send_key LIKE $1", f"campaign:{cid}:%"
    )
    assert sends == 5


async def test_schedule_api_refuses_bad_input_with_a_reason(cplat, base_env):
    """A cron that does not parse or never fires, a kind's wrong fields, and another company's
    schedule get a 4xx with the reason."""
    company = await make_company(cplat.pool)
    other = await make_company(cplat.pool, name="Other")
    async with ingest_client(base_env) as client:
        never = await client.post(
            schedules_url(company), json={"name": "x", "kind": "reports", "cron": "0 0 30 2 *"}
        )
        assert never.status_code == 422 and "never fires" in never.json()["detail"]
        garbage = await client.post(
            schedules_url(company), json={"name": "x", "kind": "reports", "cron": "soon"}
        )
        assert garbage.status_code == 422 and "5 fields" in garbage.json()["detail"]
        wrong = await client.post(
            schedules_url(company),
            json={"name": "x", "kind": "summaries", "cron": "@daily", "days": 3},
        )
        assert wrong.status_code == 422
        ok = await client.post(
            schedules_url(company), json={"name": "x", "kind": "reports", "cron": "@daily"}
        )
        sid = ok.json()["id"]
        assert (await client.get(schedules_url(other, sid))).status_code == 404
        patched = await client.patch(schedules_url(company, sid), json={"cron": "30 6 * * 1"})
        assert patched.status_code == 200 and patched.json()["cron"] == "30 6 * * 1"
        assert (await client.delete(schedules_url(company, sid))).status_code == 204
        assert (await client.get(schedules_url(company, sid))).status_code == 404
