"""Ingest's SQL: companies and their default pipeline, and filing an inbound message.

Filing is one statement (a chain of data-modifying CTEs): upsert the lead, insert the message,
its contact, its ai.engage job and its event. Round trips dominate ingest's cost, so a request
makes one, plus BEGIN/COMMIT around the JetStream publish.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

import asyncpg

DEFAULT_STAGES = ["New", "Contacted", "Qualified", "Proposal", "Closed"]


@dataclass(frozen=True)
class CompanyRoute:
    company_id: uuid.UUID
    pipeline_id: uuid.UUID
    new_stage_id: uuid.UUID


@dataclass(frozen=True)
class Filed:
    message_id: uuid.UUID
    lead_id: uuid.UUID
    job_id: uuid.UUID | None
    created: bool


def _file_sql(identity: Literal["phone", "email"]) -> str:
    column = "phone_e164" if identity == "phone" else "email"
    return f"""
WITH lead AS (
    INSERT INTO leads (company_id, pipeline_id, stage_id, {column}, contact_name, last_inbound_at)
    VALUES ($1, $2, $3, $4, $5, now())
    ON CONFLICT (company_id, {column}) WHERE {column} IS NOT NULL DO UPDATE
       SET contact_name = COALESCE(EXCLUDED.contact_name, leads.contact_name),
           last_inbound_at = now(), updated_at = now()
    RETURNING id
), msg AS (
    INSERT INTO messages (id, company_id, lead_id, direction, channel, body, status,
                          provider_message_id, job_id)
    SELECT $6, $1, lead.id, 'inbound', $7, $8, 'received', $9, $10 FROM lead
    ON CONFLICT (company_id, channel, provider_message_id)
       WHERE provider_message_id IS NOT NULL DO NOTHING
    RETURNING id, lead_id
), contact AS (
    INSERT INTO lead_contacts (lead_id, channel, address, is_primary)
    SELECT msg.lead_id, $7, $4, true FROM msg
    ON CONFLICT (lead_id, channel, address) DO NOTHING
), job AS (
    INSERT INTO jobs (id, task_name, task_params, priority, idempotency_key, company_id,
                      lead_id, max_attempts, status)
    SELECT $10, $11, jsonb_build_object('lead_id', msg.lead_id, 'message_id', msg.id), $12,
           $11 || ':' || msg.id, $1, msg.lead_id, $13, 'queued'
    FROM msg
    RETURNING id
), event AS (
    INSERT INTO events (company_id, lead_id, type, payload)
    SELECT $1, msg.lead_id, 'message.received',
           jsonb_build_object('message_id', msg.id, 'channel', $7, 'job_id', $10,
                              'provider_message_id', $9)
    FROM msg
)
SELECT msg.id AS message_id, msg.lead_id, job.id AS job_id FROM msg, job
"""


FILE_BY_PHONE = _file_sql("phone")
FILE_BY_EMAIL = _file_sql("email")

EXISTING = """
SELECT m.id AS message_id, m.lead_id, j.id AS job_id
FROM messages m LEFT JOIN jobs j ON j.idempotency_key = $4 || ':' || m.id
WHERE m.company_id = $1 AND m.channel = $2 AND m.provider_message_id = $3
"""


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
            company_id: uuid.UUID = await conn.fetchval(
                "SELECT id FROM companies WHERE is_default"
            )
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
        identity: Literal["phone", "email"],
        address: str,
        contact_name: str | None,
        channel: str,
        text: str,
        provider_message_id: str | None,
        task: str,
        priority: int,
        max_attempts: int,
    ) -> Filed:
        """File the message and its job in the caller's transaction; a repeated provider
        message id returns the first filing instead."""
        message_id, job_id = uuid.uuid4(), uuid.uuid4()
        row = await conn.fetchrow(
            FILE_BY_PHONE if identity == "phone" else FILE_BY_EMAIL,
            route.company_id, route.pipeline_id, route.new_stage_id, address, contact_name,
            message_id, channel, text, provider_message_id, job_id, task, priority, max_attempts,
        )  # fmt: skip
        if row is not None:
            return Filed(row["message_id"], row["lead_id"], row["job_id"], True)
        existing = await conn.fetchrow(
            EXISTING, route.company_id, channel, provider_message_id, task
        )
        assert existing is not None, "conflict without an existing message"
        return Filed(existing["message_id"], existing["lead_id"], existing["job_id"], False)
