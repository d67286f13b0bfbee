"""`email.sequence`: a campaign sends in bounded runs, one after the other.

Each run, in one unit of work of the job bus:

1. locks the campaign row; a campaign that is not 'sending', or a run whose number is not the
   campaign's `run_seq` (a chain that a pause and resume replaced), does nothing;
2. at the first run, turns the audience into recipients (`campaign_recipients`, one per lead
   and per address, one INSERT ... SELECT);
3. looks at the time zones of the pending recipients and keeps those where the send window is
   open now;
4. takes at most `min(CAMPAIGN_BATCH_MAX, the rate's share of one tick, what the minute has
   left)` pending recipients of those zones, oldest first. The rate is per company, across all
   its campaigns (a sliding minute over `requested_at`, counted under a per-company advisory
   lock, so two campaigns on two replicas cannot both spend it); a campaign may cap itself
   lower;
5. skips suppressed addresses, renders the template for each lead (one that fails to render is
   marked 'failed' with the reason, never mailed), and requests one send per lead through
   `unit.request_send` (send key `campaign:<id>:<lead>`, so no lead is mailed twice by one
   campaign); dispatch then applies every policy of the email channel;
6. completes the campaign when nothing is pending, or enqueues the next run with `run_at`:
   one tick later, or when the window next opens if every pending zone is closed.

So the job bus never sees more than one batch of a campaign at a time, and pausing takes
effect at the next run. A failed run rolls back whole and is retried; a run redelivered after
its commit finds `run_seq` moved on and does nothing.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from shvya_common.bus import JobContext, Unit
from shvya_common.campaigns import (
    AUDIENCE_WHERE,
    Audience,
    CampaignTemplate,
    SendWindow,
    plan_zones,
    run_key,
    send_key,
    start_runs,
)
from shvya_common.campaigns import render_campaign as render_for_lead
from shvya_common.contracts import CampaignParams, SendParams
from shvya_common.contracts.events import EventType
from shvya_common.cron import zone
from shvya_common.events import record_event
from shvya_common.render import RenderError
from shvya_scheduler.config import CampaignConfig
from shvya_scheduler.registry import Deps, registry

log = structlog.get_logger(__name__)

PRIORITY = 60
RATE_WINDOW = timedelta(minutes=1)
# Advisory-lock namespace for a company's campaign rate (the key's second half is its hash).
RATE_LOCK = 1128353869

_LOCK = """
SELECT c.id, c.company_id, c.status, c.subject, c.text_body, c.html_body, c.audience,
       c.send_window, c.rate_per_minute, c.run_seq, c.materialized_at,
       co.name AS company_name, co.timezone AS company_timezone, co.settings AS company_settings
FROM campaigns c JOIN companies co ON co.id = c.company_id
WHERE c.id = $1
FOR UPDATE OF c
"""

_MATERIALIZE = f"""
WITH added AS (
    INSERT INTO campaign_recipients (campaign_id, lead_id, company_id, email, timezone)
    SELECT $8, l.id, l.company_id, l.email, coalesce(nullif(l.timezone, ''), $9)
    FROM leads l
    WHERE {AUDIENCE_WHERE}
    ORDER BY l.created_at, l.id
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM added
"""

_PENDING_ZONES = """
SELECT DISTINCT timezone FROM campaign_recipients WHERE campaign_id = $1 AND status = 'pending'
"""

_REQUESTED_SINCE = """
SELECT count(*) AS company,
       count(*) FILTER (WHERE campaign_id = $2) AS campaign
FROM campaign_recipients
WHERE company_id = $1 AND requested_at > now() - $3::interval
"""

_TAKE = """
SELECT r.lead_id, r.email, l.contact_name, l.phone_e164, l.timezone, l.attributes,
       st.name AS stage,
       EXISTS (SELECT 1 FROM suppressions x
               WHERE x.company_id = r.company_id AND x.channel IN ('email', 'all')
                 AND lower(x.address) = lower(r.email)) AS suppressed
FROM campaign_recipients r
JOIN leads l ON l.id = r.lead_id
LEFT JOIN stages st ON st.id = l.stage_id
WHERE r.campaign_id = $1 AND r.status = 'pending' AND r.timezone = ANY($2::text[])
ORDER BY r.seq
LIMIT $3
FOR UPDATE OF r SKIP LOCKED
"""

_MARK = """
UPDATE campaign_recipients r
SET status = u.status, reason = u.reason, message_id = u.message_id,
    requested_at = CASE WHEN u.status = 'requested' THEN now() END
FROM unnest($2::uuid[], $3::text[], $4::text[], $5::uuid[]) AS u(lead_id, status, reason,
                                                               message_id)
WHERE r.campaign_id = $1 AND r.lead_id = u.lead_id
"""

_HAS_PENDING = (
    "SELECT EXISTS (SELECT 1 FROM campaign_recipients WHERE campaign_id = $1"
    " AND status = 'pending')"
)


@dataclass
class Outcome:
    """What one run did, kept as the job's result (so each run's batch is visible)."""

    run: int
    requested: int = 0
    skipped: int = 0
    failed: int = 0
    added: int = 0
    open_zones: list[str] = field(default_factory=list)
    allowance: int = 0
    limited_by: str | None = None
    next_run_at: datetime | None = None
    status: str = "sending"

    def result(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        if self.next_run_at is not None:
            out["next_run_at"] = self.next_run_at.isoformat()
        return out


def _company_rate(settings: dict[str, Any] | None, default: int) -> int:
    """The company's `settings.campaigns.rate_per_minute`, if it is a positive integer."""
    value = ((settings or {}).get("campaigns") or {}).get("rate_per_minute")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


def allowance(
    rates: list[int], used: list[int], tick_seconds: float, batch_max: int
) -> tuple[int, str]:
    """How many sends one run may request, and what limits it: each rate (per minute) gives a
    share of one tick (at least one) and caps the minute at the rate, given what the minute has
    already `used` against it."""
    per_tick = max(1, math.ceil(min(rates) * tick_seconds / 60))
    room = min(rate - spent for rate, spent in zip(rates, used, strict=True))
    limits = {"batch": batch_max, "rate": per_tick, "minute": max(0, room)}
    limit = min(limits, key=lambda k: limits[k])
    return limits[limit], limit


async def _materialize(conn: asyncpg.Connection, campaign: asyncpg.Record) -> int:
    audience = Audience.model_validate(campaign["audience"] or {})
    company_zone = zone(campaign["company_timezone"]).key
    added: int = await conn.fetchval(
        _MATERIALIZE,
        campaign["company_id"],
        *audience.sql_args(),
        campaign["id"],
        company_zone,
    )
    await conn.execute(
        "UPDATE campaigns SET materialized_at = now(), updated_at = now() WHERE id = $1",
        campaign["id"],
    )
    return added


async def _complete(unit: Unit, campaign: asyncpg.Record, outcome: Outcome) -> None:
    await unit.conn.execute(
        "UPDATE campaigns SET status = 'completed', completed_at = now(), updated_at = now()"
        " WHERE id = $1",
        campaign["id"],
    )
    recipients = await unit.conn.fetchval(
        "SELECT count(*) FROM campaign_recipients WHERE campaign_id = $1", campaign["id"]
    )
    await record_event(
        unit.conn,
        campaign["company_id"],
        None,
        EventType.CAMPAIGN_COMPLETED,
        {"campaign_id": str(campaign["id"]), "recipients": recipients},
    )
    outcome.status = "completed"


async def _request(
    unit: Unit, campaign: asyncpg.Record, rows: list[asyncpg.Record], outcome: Outcome
) -> None:
    """Render and request one send per taken recipient; record each one's outcome."""
    template = CampaignTemplate(
        subject=campaign["subject"], text=campaign["text_body"], html=campaign["html_body"]
    )
    company = {"name": campaign["company_name"], "timezone": campaign["company_timezone"]}
    leads: list[uuid.UUID] = []
    statuses: list[str] = []
    reasons: list[str | None] = []
    messages: list[uuid.UUID | None] = []
    for row in rows:
        leads.append(row["lead_id"])
        if row["suppressed"]:
            statuses.append("skipped")
            reasons.append("suppressed")
            messages.append(None)
            outcome.skipped += 1
            continue
        lead = {**dict(row), "id": row["lead_id"]}
        try:
            email = render_for_lead(template, lead, company)
        except RenderError as err:
            statuses.append("failed")
            reasons.append(str(err)[:500])
            messages.append(None)
            outcome.failed += 1
            continue
        message_id, _ = await unit.request_send(
            SendParams(
                company_id=campaign["company_id"],
                lead_id=row["lead_id"],
                channel="email",
                to=row["email"],
                text=email.text,
                subject=email.subject,
                html=email.html,
                send_key=send_key(campaign["id"], row["lead_id"]),
                purpose="marketing",
            ),
            priority=PRIORITY,
        )
        statuses.append("requested")
        reasons.append(None)
        messages.append(message_id)
        outcome.requested += 1
    await unit.conn.execute(_MARK, campaign["id"], leads, statuses, reasons, messages)


async def run_campaign(
    unit: Unit, campaign: asyncpg.Record, run: int, config: CampaignConfig
) -> Outcome:
    """One run of a sending campaign (the module docstring's steps 2–6)."""
    conn = unit.conn
    outcome = Outcome(run=run)
    if campaign["materialized_at"] is None:
        outcome.added = await _materialize(conn, campaign)
    zones = [r["timezone"] for r in await conn.fetch(_PENDING_ZONES, campaign["id"])]
    if not zones:
        await _complete(unit, campaign, outcome)
        return outcome
    window_data = campaign["send_window"]
    window = SendWindow.model_validate(window_data) if window_data else None
    now = datetime.now(UTC)
    plan = plan_zones(window, zones, now, campaign["company_timezone"])
    outcome.open_zones = plan.open
    if not plan.open:
        outcome.limited_by = "window"
    else:
        company_id = campaign["company_id"]
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", RATE_LOCK, str(company_id)
        )
        spent = await conn.fetchrow(_REQUESTED_SINCE, company_id, campaign["id"], RATE_WINDOW)
        rates = [_company_rate(campaign["company_settings"], config.rate_per_minute)]
        used = [spent["company"]]
        if campaign["rate_per_minute"] is not None:
            rates.append(campaign["rate_per_minute"])
            used.append(spent["campaign"])
        outcome.allowance, outcome.limited_by = allowance(
            rates, used, config.tick_seconds, config.batch_max
        )
        if outcome.allowance:
            rows = await conn.fetch(_TAKE, campaign["id"], plan.open, outcome.allowance)
            await _request(unit, campaign, rows, outcome)
            if len(rows) < outcome.allowance:
                outcome.limited_by = "pending"
    if not await conn.fetchval(_HAS_PENDING, campaign["id"]):
        await _complete(unit, campaign, outcome)
        return outcome
    tick = now + timedelta(seconds=config.tick_seconds)
    outcome.next_run_at = tick if plan.open or plan.next_open is None else plan.next_open
    next_run = run + 1
    await conn.execute(
        "UPDATE campaigns SET run_seq = $2, updated_at = now() WHERE id = $1",
        campaign["id"],
        next_run,
    )
    await unit.enqueue_job(
        "email.sequence",
        CampaignParams(campaign_id=campaign["id"], run=next_run),
        run_key(campaign["id"], next_run),
        PRIORITY,
        company_id=campaign["company_id"],
        run_at=outcome.next_run_at,
    )
    return outcome


async def refresh_campaign(unit: Unit, campaign: asyncpg.Record) -> dict[str, Any]:
    """A schedule's firing: add the leads that newly match, and start a finished or draft
    campaign again when there is someone to send to. Paused and cancelled ones are left."""
    status = campaign["status"]
    if status in ("paused", "cancelled"):
        return {"status": status, "skipped": f"the campaign is {status}"}
    added = await _materialize(unit.conn, campaign)
    result: dict[str, Any] = {"status": status, "added": added}
    if status == "draft" or (status == "completed" and added):
        run = await start_runs(unit, campaign["id"], [status])
        if status == "draft":
            await record_event(
                unit.conn,
                campaign["company_id"],
                None,
                EventType.CAMPAIGN_STARTED,
                {"campaign_id": str(campaign["id"]), "by": "schedule"},
            )
        result.update(status="sending", run=run)
    return result


@registry.task("email.sequence")
async def handle_campaign(
    params: CampaignParams, job: JobContext, deps: Deps
) -> dict[str, Any] | None:
    config = deps.settings.campaign_config()
    async with deps.bus.unit() as unit:
        campaign = await unit.conn.fetchrow(_LOCK, params.campaign_id)
        if campaign is None:
            return {"status": "gone"}
        if params.action == "refresh":
            result = await refresh_campaign(unit, campaign)
        elif campaign["status"] != "sending":
            result = {"run": params.run, "status": campaign["status"], "stopped": True}
        elif params.run != campaign["run_seq"]:
            result = {"run": params.run, "status": "superseded"}
        else:
            result = (await run_campaign(unit, campaign, params.run, config)).result()
    log.info("campaign_run", campaign_id=str(params.campaign_id), **_loggable(result))
    return result


def _loggable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k in ("run", "status", "requested", "limited_by")}
