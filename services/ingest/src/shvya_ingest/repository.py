"""Ingest's SQL: companies and their default pipeline, and filing inbound messages.

Filing is one statement (a chain of data-modifying CTEs over arrays): upsert the leads, insert
the messages, their contacts, (for an opt-out) a suppression, and their events. The ai.engage
jobs are the job bus's to write (`Unit.enqueue_jobs`, one more statement for the whole batch):
the message rows name their job ids, which the bus inserts before COMMIT (the foreign key is
checked at COMMIT). Round trips dominate ingest's cost, so a request makes two for a single
message or for a webhook's whole batch, plus BEGIN/COMMIT.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg

from shvya_common import tracing
from shvya_common.ids import new_id

DEFAULT_STAGES = ["New", "Contacted", "Qualified", "Proposal", "Closed"]
# An opt-out's confirmation is the send keyed "optout:<inbound message id>".
OPTOUT_SEND_KEY_PREFIX = "optout:"


@dataclass(frozen=True)
class CompanyRoute:
    company_id: uuid.UUID
    pipeline_id: uuid.UUID
    new_stage_id: uuid.UUID


@dataclass(frozen=True)
class InboundRow:
    """One message to file: who sent it, what it says, and what filing it sets in motion."""

    address: str
    text: str
    contact_name: str | None = None
    provider_message_id: str | None = None
    # When the contact sent it (the provider's timestamp); None means now.
    received_at: datetime | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # An opt-out files the message and a suppression instead of an ai.engage job.
    optout: bool = False
    # False files the message without an ai.engage job (an auto-reply: no answer, no loop).
    engage: bool = True
    # The request's trace, taken where the row is made: batched filing runs in another task.
    traceparent: str | None = field(default_factory=tracing.current_traceparent)


@dataclass(frozen=True)
class Filed:
    message_id: uuid.UUID
    lead_id: uuid.UUID
    job_id: uuid.UUID | None
    created: bool


# How a lead is found when filing: by phone number, by email address, or by WhatsApp's
# business-scoped user id (a username user who shares no phone number).
Identity = Literal["phone", "email", "wa_user"]
_IDENTITY_COLUMNS: dict[str, str] = {
    "phone": "phone_e164",
    "email": "email",
    "wa_user": "wa_user_id",
}


def _file_sql(identity: Identity) -> str:
    column = _IDENTITY_COLUMNS[identity]
    return f"""
WITH input AS (
    SELECT * FROM unnest($4::text[], $5::text[], $6::uuid[], $7::text[], $8::text[], $9::uuid[],
                         $10::timestamptz[], $11::jsonb[], $12::boolean[])
        AS i(address, contact_name, message_id, body, provider_message_id, job_id, received_at,
             meta, optout)
), lead AS (
    INSERT INTO leads (company_id, pipeline_id, stage_id, {column}, contact_name, last_inbound_at)
    SELECT $1, $2, $3, address,
           (array_agg(contact_name ORDER BY received_at DESC)
                FILTER (WHERE contact_name IS NOT NULL))[1],
           max(received_at)
    -- One order for every batch, so concurrent batches lock shared leads without deadlock.
    FROM input GROUP BY address ORDER BY address
    ON CONFLICT (company_id, {column}) WHERE {column} IS NOT NULL DO UPDATE
       SET contact_name = COALESCE(EXCLUDED.contact_name, leads.contact_name),
           -- A provider retrying an old message must not reopen a reply window.
           last_inbound_at = GREATEST(leads.last_inbound_at, EXCLUDED.last_inbound_at),
           updated_at = now()
    RETURNING id, {column} AS address, (xmax = 0) AS created
), msg AS (
    INSERT INTO messages (id, company_id, lead_id, direction, channel, body, status,
                          provider_message_id, job_id, meta)
    SELECT i.message_id, $1, lead.id, 'inbound', $13, i.body, 'received', i.provider_message_id,
           i.job_id, i.meta
    FROM input i JOIN lead ON lead.address = i.address
    ON CONFLICT (company_id, channel, provider_message_id)
       WHERE provider_message_id IS NOT NULL DO NOTHING
    RETURNING id, lead_id, job_id
), contact AS (
    INSERT INTO lead_contacts (lead_id, channel, address, is_primary)
    SELECT DISTINCT msg.lead_id, $13, lead.address, true FROM msg JOIN lead ON lead.id = msg.lead_id
    ON CONFLICT (lead_id, channel, address) DO NOTHING
), suppress AS (
    INSERT INTO suppressions (company_id, channel, address, scope, reason)
    SELECT DISTINCT $1, $13, i.address, 'all', 'optout_keyword'
    FROM msg JOIN input i ON i.message_id = msg.id WHERE i.optout
    ON CONFLICT (company_id, channel, address, scope) DO NOTHING
), event AS (
    INSERT INTO events (company_id, lead_id, type, payload)
    SELECT $1, msg.lead_id, 'message.received',
           jsonb_build_object('message_id', msg.id, 'channel', $13, 'job_id', msg.job_id,
                              'provider_message_id', i.provider_message_id, 'optout', i.optout)
    FROM msg JOIN input i ON i.message_id = msg.id
    UNION ALL
    SELECT $1, msg.lead_id, 'lead.opted_out',
           jsonb_build_object('message_id', msg.id, 'channel', $13, 'reason', 'optout_keyword')
    FROM msg JOIN input i ON i.message_id = msg.id WHERE i.optout
    UNION ALL
    SELECT $1, lead.id, 'lead.created',
           jsonb_build_object('channel', $13, 'address', lead.address, 'pipeline_id', $2,
                              'stage_id', $3)
    FROM lead WHERE lead.created
)
SELECT i.message_id AS requested_id, COALESCE(msg.id, old.id) AS message_id,
       COALESCE(msg.lead_id, old.lead_id) AS lead_id, COALESCE(msg.job_id, old_job.id) AS job_id,
       msg.id IS NOT NULL AS created
FROM input i
LEFT JOIN msg ON msg.id = i.message_id
-- Laterals, looked up per input row by the whole unique key: a plain join let the generic plan
-- read every message of the company's channel (the index by company and channel alone) and
-- each one's job, in every batch, so filing slowed as the company's history grew.
LEFT JOIN LATERAL (
    SELECT m.id, m.lead_id FROM messages m
    WHERE msg.id IS NULL AND m.company_id = $1 AND m.channel = $13
      AND m.provider_message_id = i.provider_message_id
    LIMIT 1  -- the key is unique; LIMIT keeps the planner from flattening it into a join
) old ON true
LEFT JOIN LATERAL (
    SELECT j.id FROM jobs j WHERE old.id IS NOT NULL AND j.idempotency_key = $14 || ':' || old.id
    LIMIT 1
) old_job ON true
"""


FILE_SQL: dict[str, str] = {identity: _file_sql(identity) for identity in _IDENTITY_COLUMNS}  # type: ignore[arg-type]

# A concurrent request that filed the same provider id committed after our statement's snapshot:
# a fresh statement sees it.
EXISTING = """
SELECT m.provider_message_id, m.id AS message_id, m.lead_id, j.id AS job_id
FROM messages m LEFT JOIN jobs j ON j.idempotency_key = $4 || ':' || m.id
WHERE m.company_id = $1 AND m.channel = $2 AND m.provider_message_id = ANY($3::text[])
"""


def file_args(
    route: CompanyRoute, rows: Sequence[InboundRow], channel: str, task: str
) -> tuple[list[uuid.UUID], list[Any]]:
    """FILE_SQL's arguments for `rows`: the new message ids (in order), and the arguments."""
    message_ids = [new_id() for _ in rows]
    job_ids = [None if row.optout or not row.engage else new_id() for row in rows]
    now = datetime.now(UTC)
    return message_ids, [
        route.company_id,
        route.pipeline_id,
        route.new_stage_id,
        [r.address for r in rows],
        [r.contact_name for r in rows],
        message_ids,
        [r.text for r in rows],
        [r.provider_message_id for r in rows],
        job_ids,
        [r.received_at or now for r in rows],
        [r.meta for r in rows],
        [r.optout for r in rows],
        channel,
        task,
    ]


class IngestRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ensure_default_company(self, name: str) -> uuid.UUID:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO companies (name, is_default) VALUES ($1, true)"
                " ON CONFLICT (is_default) WHERE is_default DO NOTHING",
                name,
            )
            company_id: uuid.UUID = await conn.fetchval("SELECT id FROM companies WHERE is_default")
            return company_id

    async def ensure_company_route(self, company_id: uuid.UUID) -> CompanyRoute | None:
        """The company's default pipeline and its first stage, created if missing; None if
        the company does not exist."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT 1 FROM companies WHERE id = $1", company_id):
                return None
            await conn.execute(
                "INSERT INTO pipelines (company_id, name, is_default) VALUES ($1, 'Sales', true)"
                " ON CONFLICT (company_id) WHERE is_default DO NOTHING",
                company_id,
            )
            pipeline_id = await conn.fetchval(
                "SELECT id FROM pipelines WHERE company_id = $1 AND is_default", company_id
            )
            await conn.execute(
                "INSERT INTO stages (pipeline_id, name, position)"
                " SELECT $1, s.name, s.pos FROM unnest($2::text[]) WITH ORDINALITY AS s(name, pos)"
                " ON CONFLICT DO NOTHING",
                pipeline_id,
                DEFAULT_STAGES,
            )
            stage_id = await conn.fetchval(
                "SELECT id FROM stages WHERE pipeline_id = $1 ORDER BY position LIMIT 1",
                pipeline_id,
            )
            await conn.execute(
                "INSERT INTO ai_models (company_id) VALUES ($1) ON CONFLICT DO NOTHING",
                company_id,
            )
            return CompanyRoute(company_id, pipeline_id, stage_id)

    @staticmethod
    async def file_inbound(
        conn: asyncpg.Connection,
        route: CompanyRoute,
        *,
        identity: Identity,
        channel: str,
        rows: Sequence[InboundRow],
        task: str,
    ) -> list[Filed]:
        """File messages, their leads, contacts, suppressions and events in one statement, in
        the caller's transaction; results follow `rows`. Each new message that is not an opt-out
        names a fresh job id (`Filed.job_id`), for the caller to enqueue in the same
        transaction; a message filed before returns its existing job.

        A provider message id seen before returns the first filing with `created` False. The
        rows must not repeat a provider message id among themselves.
        """
        message_ids, args = file_args(route, rows, channel, task)
        records = await conn.fetch(FILE_SQL[identity], *args)
        by_request = {rec["requested_id"]: rec for rec in records}
        raced = [
            row.provider_message_id
            for row, message_id in zip(rows, message_ids, strict=True)
            if by_request[message_id]["message_id"] is None
        ]
        existing = {}
        if raced:
            found = await conn.fetch(EXISTING, route.company_id, channel, raced, task)
            existing = {rec["provider_message_id"]: rec for rec in found}
        filed = []
        for row, message_id in zip(rows, message_ids, strict=True):
            rec = by_request[message_id]
            if rec["message_id"] is None:
                rec = existing[row.provider_message_id]
                filed.append(Filed(rec["message_id"], rec["lead_id"], rec["job_id"], False))
            else:
                filed.append(
                    Filed(rec["message_id"], rec["lead_id"], rec["job_id"], rec["created"])
                )
        return filed

    @staticmethod
    async def optout_confirmations(
        conn: asyncpg.Connection, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, uuid.UUID]:
        """The confirmation send (its job id is its message id) of each opted-out message."""
        rows = await conn.fetch(
            "SELECT id, reply_to_id FROM messages WHERE send_key = ANY($1::text[])",
            [f"{OPTOUT_SEND_KEY_PREFIX}{m}" for m in message_ids],
        )
        return {r["reply_to_id"]: r["id"] for r in rows}

    @staticmethod
    async def company_for_address(
        conn: asyncpg.Connection | asyncpg.Pool, channel: str, address: str
    ) -> uuid.UUID | None:
        """The company that registered this provider address (inbound_routes), if any."""
        company_id: uuid.UUID | None = await conn.fetchval(
            "SELECT company_id FROM inbound_routes WHERE channel = $1 AND address = $2",
            channel,
            address,
        )
        return company_id
