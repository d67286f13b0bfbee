"""Recurring schedules: a loop that fires each due `schedules` row once per cron slot.

A pass takes the due rows `FOR UPDATE SKIP LOCKED` (replicas split them; none fires a row
another holds), and for each one, inside a savepoint of one unit of work of the job bus:

- `campaign`: enqueues an `email.sequence` refresh of its campaign (new matches of the audience
  are added and sent to; a finished campaign starts again for them);
- `summaries`: enqueues `ai.summary` for the company's leads active since the previous firing
  (at most SCHEDULE_SUMMARY_BATCH, under the sweep's own key `summary:<lead>:<last message>`, so
  a lead the quiet-conversation sweep already queued is not summarised twice);
- `reports`: enqueues `report.refresh` for the company.

then writes the next slot (`shvya_common.cron.next_fire` on the company's wall clock, after
the later of now and the slot just fired, so a scheduler that was down fires a missed slot
once, not once per missed slot). Every enqueue's key names the schedule and the slot, so
even a slot fired twice enqueues its work once. A firing that fails keeps its error on the
row and the schedule moves on to its next slot.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from shvya_common.bus import JobBus, NewJob, Unit
from shvya_common.contracts import CampaignParams, ReportParams, SummaryParams
from shvya_common.cron import CronError, next_fire, zone
from shvya_common.db import is_outage
from shvya_scheduler.config import ScheduleConfig
from shvya_scheduler.sweeps import DEAD_STATUSES, summary_key

log = structlog.get_logger(__name__)

_CLAIM = """
SELECT s.id, s.company_id, s.kind, s.cron, s.campaign_id, s.params, s.next_run_at,
       s.last_run_at, c.timezone
FROM schedules s JOIN companies c ON c.id = s.company_id
WHERE s.enabled AND s.next_run_at <= now()
ORDER BY s.next_run_at
LIMIT $1
FOR UPDATE OF s SKIP LOCKED
"""

_ADVANCE = """
UPDATE schedules
SET next_run_at = $2, enabled = $3, last_run_at = now(), last_slot = $4, last_result = $5,
    last_error = $6, runs = runs + 1, updated_at = now()
WHERE id = $1
"""

ACTIVE_LEADS = """
SELECT l.id AS lead_id, last.id AS last_message_id
FROM leads l
CROSS JOIN LATERAL (
    SELECT id FROM messages
    WHERE lead_id = l.id AND status <> ALL($4::text[])
    ORDER BY created_at DESC, id DESC LIMIT 1) last
WHERE l.company_id = $1 AND l.last_inbound_at IS NOT NULL
  AND greatest(l.last_inbound_at, l.last_outbound_at) > $2
  AND (l.attributes->'summary'->>'last_message_id') IS DISTINCT FROM last.id::text
ORDER BY greatest(l.last_inbound_at, l.last_outbound_at) DESC
LIMIT $3
"""


def slot_key(schedule_id: object, slot: datetime) -> str:
    """The idempotency key of one schedule's work for one slot."""
    return f"schedule:{schedule_id}:{slot.astimezone(UTC).isoformat()}"


async def _summaries(
    unit: Unit, row: asyncpg.Record, config: ScheduleConfig, now: datetime
) -> dict[str, Any]:
    since = row["last_run_at"] or now - config.summary_lookback
    leads = await unit.conn.fetch(
        ACTIVE_LEADS, row["company_id"], since, config.summary_batch, DEAD_STATUSES
    )
    jobs = [
        NewJob(
            "ai.summary",
            SummaryParams(lead_id=r["lead_id"], reason="schedule").model_dump(mode="json"),
            summary_key(r["lead_id"], r["last_message_id"]),
            company_id=row["company_id"],
            lead_id=r["lead_id"],
        )
        for r in leads
    ]
    enqueued = await unit.enqueue_jobs(jobs)
    return {"leads": len(leads), "enqueued": sum(j.created for j in enqueued)}


async def fire(
    unit: Unit, row: asyncpg.Record, config: ScheduleConfig, now: datetime
) -> dict[str, Any]:
    """Enqueue one schedule's work for its due slot; returns what was done."""
    key = slot_key(row["id"], row["next_run_at"])
    params = row["params"] or {}
    if row["kind"] == "campaign":
        job = await unit.enqueue_job(
            "email.sequence",
            CampaignParams(campaign_id=row["campaign_id"], action="refresh"),
            key,
            company_id=row["company_id"],
        )
        return {"job_id": str(job.id), "created": job.created}
    if row["kind"] == "reports":
        report = ReportParams(company_id=row["company_id"], **params)
        job = await unit.enqueue_job("report.refresh", report, key, company_id=row["company_id"])
        return {"job_id": str(job.id), "created": job.created}
    if row["kind"] == "summaries":
        return await _summaries(unit, row, config, now)
    raise ValueError(f"unknown schedule kind {row['kind']!r}")


async def fire_due_schedules(bus: JobBus, config: ScheduleConfig) -> int:
    """Fire up to `config.batch` due schedules; returns how many were claimed."""
    async with bus.unit() as unit:
        rows = await unit.conn.fetch(_CLAIM, config.batch)
        now = datetime.now(UTC)
        for row in rows:
            result: dict[str, Any] | None = None
            error: str | None = None
            before = len(unit.outgoing)
            try:
                async with unit.conn.transaction():  # a savepoint per schedule
                    result = await fire(unit, row, config, now)
            except (ValueError, TypeError, LookupError, asyncpg.PostgresError) as err:
                del unit.outgoing[before:]
                if isinstance(err, asyncpg.PostgresError) and is_outage(err):
                    raise
                error = f"{type(err).__name__}: {err}"[:2000]
                log.error("schedule_failed", schedule_id=str(row["id"]), error=error[:300])
            enabled = True
            try:
                after = max(now, row["next_run_at"])
                upcoming: datetime | None = next_fire(
                    row["cron"], zone(row["timezone"]), after=after
                )
            except CronError as err:
                upcoming, enabled = None, False
                error = f"disabled: {err}"
            await unit.conn.execute(
                _ADVANCE, row["id"], upcoming, enabled, row["next_run_at"], result, error
            )
            log.info(
                "schedule_fired",
                schedule_id=str(row["id"]),
                kind=row["kind"],
                slot=row["next_run_at"].isoformat(),
                next_run_at=upcoming.isoformat() if upcoming else None,
                failed=error is not None,
            )
    return len(rows)


async def schedule_loop(bus: JobBus, stopping: asyncio.Event, config: ScheduleConfig) -> None:
    """Fire due schedules until `stopping` is set; a full batch is followed at once by the next."""
    while not stopping.is_set():
        try:
            fired = await fire_due_schedules(bus, config)
        except Exception as err:  # a dependency outage: keep the loop alive
            log.warning("schedule_pass_failed", error=f"{type(err).__name__}: {err}"[:300])
            fired = 0
        if fired < config.batch:
            try:
                await asyncio.wait_for(stopping.wait(), config.tick_seconds)
            except TimeoutError:
                pass
