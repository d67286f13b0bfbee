"""What the sequences API reads: enrolments with their current step, a lead's enrolments, an
enrolment's history with the status of each message it sent, and the leads a filter selects."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from shvya_common.sequences.enrolments import LIVE

_ENROLMENT_VIEW = """
SELECT e.id, e.company_id, e.sequence_id, e.lead_id, e.status, e.run, e.next_run_at, e.source,
       e.stop_reason, e.enrolled_at, e.paused_at, e.resumed_at, e.finished_at, e.updated_at,
       e.current_step_id, st.key AS current_step_key, st.action AS current_step_kind
FROM sequence_enrolments e LEFT JOIN sequence_steps st ON st.id = e.current_step_id
"""

# Leads matching a filter that are not in the sequence now, oldest first. Last activity is the
# later of the lead's last inbound and outbound message, or its creation when it has none.
_SELECT_LEADS = """
SELECT l.id FROM leads l LEFT JOIN stages s ON s.id = l.stage_id
WHERE l.company_id = $1
  AND ($9::text IS NULL OR l.phone_e164 = $9)
  AND ($10::text IS NULL OR l.email = $10)
  AND ($2::text IS NULL OR lower(s.name) = lower($2))
  AND ($3::jsonb IS NULL OR l.attributes @> $3)
  AND ($4::timestamptz IS NULL
       OR coalesce(greatest(l.last_inbound_at, l.last_outbound_at), l.created_at) < $4)
  AND ($5::timestamptz IS NULL
       OR coalesce(greatest(l.last_inbound_at, l.last_outbound_at), l.created_at) >= $5)
  AND NOT EXISTS (SELECT 1 FROM sequence_enrolments e
                  WHERE e.sequence_id = $6 AND e.lead_id = l.id AND e.status = ANY($7::text[]))
ORDER BY l.created_at, l.id
LIMIT $8
"""


async def select_leads(
    conn: asyncpg.Connection,
    company_id: uuid.UUID,
    sequence_id: uuid.UUID,
    *,
    phone: str | None = None,
    email: str | None = None,
    stage: str | None,
    attributes: dict[str, Any] | None,
    last_activity_before: datetime | None,
    last_activity_after: datetime | None,
    limit: int,
) -> list[uuid.UUID]:
    rows = await conn.fetch(
        _SELECT_LEADS,
        company_id,
        stage,
        attributes,
        last_activity_before,
        last_activity_after,
        sequence_id,
        LIVE,
        limit,
        phone,
        email,
    )
    return [r["id"] for r in rows]


async def unknown_leads(
    conn: asyncpg.Connection, company_id: uuid.UUID, lead_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """The ids that are not leads of the company."""
    rows = await conn.fetch(
        "SELECT id FROM leads WHERE company_id = $1 AND id = ANY($2::uuid[])",
        company_id,
        list(lead_ids),
    )
    found = {r["id"] for r in rows}
    return [lead for lead in dict.fromkeys(lead_ids) if lead not in found]


async def list_enrolments(
    conn: asyncpg.Connection,
    sequence_id: uuid.UUID,
    *,
    status: str | None,
    lead_id: uuid.UUID | None,
    limit: int,
    offset: int,
) -> tuple[list[asyncpg.Record], int]:
    where = (
        " WHERE e.sequence_id = $1 AND ($2::text IS NULL OR e.status = $2)"
        " AND ($3::uuid IS NULL OR e.lead_id = $3)"
    )
    rows = await conn.fetch(
        _ENROLMENT_VIEW + where + " ORDER BY e.enrolled_at, e.id LIMIT $4 OFFSET $5",
        sequence_id,
        status,
        lead_id,
        limit,
        offset,
    )
    total = await conn.fetchval(
        "SELECT count(*) FROM sequence_enrolments e" + where, sequence_id, status, lead_id
    )
    return list(rows), int(total)


async def lead_enrolments(
    conn: asyncpg.Connection, company_id: uuid.UUID, lead_id: uuid.UUID
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        _ENROLMENT_VIEW + " WHERE e.company_id = $1 AND e.lead_id = $2 ORDER BY e.enrolled_at",
        company_id,
        lead_id,
    )
    return rows


async def get_enrolment(
    conn: asyncpg.Connection, sequence_id: uuid.UUID, enrolment_id: uuid.UUID
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        _ENROLMENT_VIEW + " WHERE e.id = $1 AND e.sequence_id = $2", enrolment_id, sequence_id
    )
    return row


async def enrolment_history(
    conn: asyncpg.Connection, enrolment_id: uuid.UUID
) -> list[asyncpg.Record]:
    """What happened, in order, with the status of each message a send step requested."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT h.created_at AS at, h.run, h.kind, h.step_id, h.step_key, h.step_version,"
        " h.action, h.outcome, h.detail, h.message_id, m.status AS message_status"
        " FROM sequence_history h LEFT JOIN messages m ON m.id = h.message_id"
        " WHERE h.enrolment_id = $1 ORDER BY h.id",
        enrolment_id,
    )
    return rows
