"""Periodic sweeps that turn the state of conversations into jobs.

- Quiet summaries: a conversation whose last message is older than SUMMARY_QUIET_MINUTES (and
  newer than the look-back) gets an ai.summary job, unless its summary already covers that
  last message.
- Bump-ups: a lead whose last message was ours, on WhatsApp, silent for BUMPUP_SILENT_DAYS and
  with fewer than BUMPUP_MAX bump-ups unanswered, gets a followup.bumpup job.

Every job is enqueued under an idempotency key tied to the message it follows
(`summary:<lead>:<last message>`, `bumpup:<lead>:after:<last message>`), so a sweep that runs
again, or on two scheduler replicas at once, never enqueues the same work twice. Engage
re-checks each bump-up when it runs, since the lead may reply in between.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta

import structlog

from shvya_common.bus import JobBus
from shvya_common.contracts import BumpupParams, SummaryParams

log = structlog.get_logger(__name__)

# Messages that never reached the lead do not make a conversation quiet or ours.
DEAD_STATUSES = ["dlq", "suppressed", "failed", "cancelled"]
WHATSAPP = ["whatsapp_cloud", "whatsapp_web"]

QUIET_CONVERSATIONS = """
SELECT l.id AS lead_id, l.company_id, last.id AS last_message_id
FROM leads l
CROSS JOIN LATERAL (
    SELECT id, created_at FROM messages
    WHERE lead_id = l.id AND status <> ALL($4::text[])
    ORDER BY created_at DESC, id DESC LIMIT 1) last
WHERE greatest(l.last_inbound_at, l.last_outbound_at)
      BETWEEN now() - $2::interval AND now() - $1::interval
  AND l.last_inbound_at IS NOT NULL
  AND last.created_at <= now() - $1::interval
  AND (l.attributes->'summary'->>'last_message_id') IS DISTINCT FROM last.id::text
  AND NOT EXISTS (SELECT 1 FROM jobs j
                  WHERE j.idempotency_key = 'summary:' || l.id || ':' || last.id)
ORDER BY greatest(l.last_inbound_at, l.last_outbound_at)
LIMIT $3
"""

SILENT_LEADS = """
SELECT l.id AS lead_id, l.company_id, last.id AS last_message_id,
       coalesce((l.attributes->'followup'->>'count')::int, 0) AS sent
FROM leads l
CROSS JOIN LATERAL (
    SELECT id, direction, channel, created_at FROM messages
    WHERE lead_id = l.id AND status <> ALL($4::text[])
    ORDER BY created_at DESC, id DESC LIMIT 1) last
WHERE l.last_outbound_at <= now() - $1::interval
  AND (l.last_inbound_at IS NULL OR l.last_inbound_at < l.last_outbound_at)
  AND l.phone_e164 IS NOT NULL
  AND last.direction = 'outbound' AND last.channel = ANY($5::text[])
  AND last.created_at <= now() - $1::interval
  AND (SELECT count(*) FROM messages f
       WHERE f.lead_id = l.id AND f.direction = 'outbound' AND f.meta->>'purpose' = 'followup'
         AND f.status <> ALL($4::text[])
         AND f.created_at > coalesce(l.last_inbound_at, '-infinity')) < $2
  AND NOT EXISTS (SELECT 1 FROM jobs j
                  WHERE j.idempotency_key = 'bumpup:' || l.id || ':after:' || last.id)
ORDER BY l.last_outbound_at
LIMIT $3
"""


@dataclass(frozen=True)
class SweepConfig:
    interval_seconds: float
    batch: int
    summary_quiet: timedelta | None
    summary_lookback: timedelta
    bumpup_silent: timedelta | None
    bumpup_max: int


def summary_key(lead_id: uuid.UUID, last_message_id: uuid.UUID) -> str:
    return f"summary:{lead_id}:{last_message_id}"


def bumpup_key(lead_id: uuid.UUID, last_message_id: uuid.UUID) -> str:
    return f"bumpup:{lead_id}:after:{last_message_id}"


async def sweep_quiet_summaries(
    bus: JobBus, quiet: timedelta, lookback: timedelta, limit: int
) -> int:
    """Enqueue ai.summary for conversations quiet for `quiet`; returns how many were new."""
    rows = await bus.pool.fetch(QUIET_CONVERSATIONS, quiet, lookback, limit, DEAD_STATUSES)
    created = 0
    for row in rows:
        job = await bus.enqueue_job(
            "ai.summary",
            SummaryParams(lead_id=row["lead_id"], reason="quiet"),
            summary_key(row["lead_id"], row["last_message_id"]),
            company_id=row["company_id"],
            lead_id=row["lead_id"],
        )
        created += job.created
    return created


async def sweep_bumpups(bus: JobBus, silent: timedelta, max_bumps: int, limit: int) -> int:
    """Enqueue followup.bumpup for leads silent after our last message; returns how many."""
    rows = await bus.pool.fetch(SILENT_LEADS, silent, max_bumps, limit, DEAD_STATUSES, WHATSAPP)
    created = 0
    for row in rows:
        job = await bus.enqueue_job(
            "followup.bumpup",
            BumpupParams(lead_id=row["lead_id"], bump_number=row["sent"] + 1),
            bumpup_key(row["lead_id"], row["last_message_id"]),
            company_id=row["company_id"],
            lead_id=row["lead_id"],
        )
        created += job.created
    return created


async def sweep_once(bus: JobBus, config: SweepConfig) -> dict[str, int]:
    found: dict[str, int] = {}
    if config.summary_quiet is not None:
        found["summaries"] = await sweep_quiet_summaries(
            bus, config.summary_quiet, config.summary_lookback, config.batch
        )
    if config.bumpup_silent is not None and config.bumpup_max > 0:
        found["bumpups"] = await sweep_bumpups(
            bus, config.bumpup_silent, config.bumpup_max, config.batch
        )
    return found


async def sweep_loop(bus: JobBus, stopping: asyncio.Event, config: SweepConfig) -> None:
    """Sweep every `interval_seconds` until `stopping` is set; outages only skip a round."""
    while not stopping.is_set():
        try:
            found = await sweep_once(bus, config)
            if any(found.values()):
                log.info("sweep_enqueued", **found)
        except Exception as err:  # a dependency outage: keep the loop alive
            log.warning("sweep_failed", error=f"{type(err).__name__}: {err}")
        try:
            await asyncio.wait_for(stopping.wait(), config.interval_seconds)
        except TimeoutError:
            pass
