"""Helpers for engage's integration tests: CRM rows written the way the services write them,
engage's real handlers (built by its app's factory) in an in-process worker, and job polling."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg

from shvya_common.bus import Worker
from shvya_common.contracts import EngageParams
from shvya_common.knowledge import KnowledgeBase, NewDocument, open_embedder
from shvya_common.runtime import Platform
from shvya_engage.app import make_handlers
from shvya_engage.settings import EngageSettings
from tests.support import eventually

SYSTEM_PROMPT = (
    "You are Sol, the friendly sales assistant of Acme Solar. You help homeowners choose "
    "rooftop solar plans."
)

DOCS = [
    (
        "Pricing",
        "# Pricing\nThe Home plan costs $99 per month and includes 6 panels. "
        "The Business plan costs $450 per month for up to 30 panels.",
    ),
    (
        "Warranty",
        "# Warranty\nEvery panel carries a 25-year performance warranty. "
        "Inverters are covered for 10 years, batteries for 12 years.",
    ),
    (
        "Installation",
        "# Installation\nInstallation takes two days after the roof survey. "
        "We install in Pune, Mumbai and Bengaluru.",
    ),
]


@dataclass(frozen=True)
class Lead:
    company_id: uuid.UUID
    lead_id: uuid.UUID


def engage_settings(base_env: dict[str, str], **overrides: Any) -> EngageSettings:
    values: dict[str, Any] = {k.lower(): v for k, v in base_env.items() if k != "ADMIN_TOKEN"}
    values.update({"openai_api_key": None, "embeddings_provider": "none"})
    values.update(overrides)
    return EngageSettings(**values)


async def seed_lead(
    pool: asyncpg.Pool,
    *,
    system_prompt: str | None = SYSTEM_PROMPT,
    model: str | None = "gpt-acme",
    name: str | None = "Asha Rao",
    phone: str | None = "+15550100",
    email: str | None = None,
    attributes: dict[str, Any] | None = None,
    company_id: uuid.UUID | None = None,
) -> Lead:
    if company_id is None:
        company_id = await pool.fetchval(
            "INSERT INTO companies (name) VALUES ('Acme Solar') RETURNING id"
        )
        if system_prompt is not None:
            await pool.execute(
                "INSERT INTO ai_models (company_id, model, temperature, max_tokens, system_prompt)"
                " VALUES ($1, $2, 0.4, 256, $3)",
                company_id,
                model or "gpt-4o-mini",
                system_prompt,
            )
    pipeline = await pool.fetchval(
        "INSERT INTO pipelines (company_id, name) VALUES ($1, 'Sales') RETURNING id", company_id
    )
    stage = await pool.fetchval(
        "INSERT INTO stages (pipeline_id, name, position) VALUES ($1, 'Qualified', 3) RETURNING id",
        pipeline,
    )
    lead_id = await pool.fetchval(
        "INSERT INTO leads (company_id, pipeline_id, stage_id, phone_e164, email, contact_name,"
        " attributes) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        company_id,
        pipeline,
        stage,
        phone,
        email,
        name,
        attributes or {},
    )
    return Lead(company_id, lead_id)


async def add_message(
    pool: asyncpg.Pool,
    lead: Lead,
    direction: str,
    body: str,
    *,
    channel: str = "whatsapp_cloud",
    ago: timedelta = timedelta(0),
    purpose: str | None = None,
    status: str | None = None,
) -> uuid.UUID:
    """A message as ingest (inbound) or dispatch (outbound, sent) leaves it, `ago` in the past."""
    column = "last_inbound_at" if direction == "inbound" else "last_outbound_at"
    meta = {"purpose": purpose} if purpose else {}
    status = status or ("received" if direction == "inbound" else "sent")
    async with pool.acquire() as conn, conn.transaction():
        message_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO messages (company_id, lead_id, direction, channel, body, status, meta,"
            " created_at, sent_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now() - $8::interval,"
            " CASE WHEN $3 = 'outbound' THEN now() - $8::interval END) RETURNING id",
            lead.company_id,
            lead.lead_id,
            direction,
            channel,
            body,
            status,
            meta,
            ago,
        )
        if status not in ("dlq", "suppressed", "failed"):
            await conn.execute(
                f"UPDATE leads SET {column} = greatest({column}, now() - $2::interval)"
                " WHERE id = $1",
                lead.lead_id,
                ago,
            )
    return message_id


async def load_docs(
    pool: asyncpg.Pool, settings: EngageSettings, company_id: uuid.UUID
) -> dict[str, uuid.UUID]:
    """The sample documents, stored and embedded as the knowledge-base API would store them."""
    async with open_embedder(settings) as embedder:
        kb = KnowledgeBase.from_settings(pool, embedder, settings)
        ids = {}
        for title, content in DOCS:
            stored = await kb.add_document(
                company_id, NewDocument(content=content, format="markdown", title=title)
            )
            ids[title] = stored.info.id
    return ids


async def enqueue_engage(plat: Platform, lead: Lead, message_id: uuid.UUID) -> uuid.UUID:
    job = await plat.bus.enqueue_job(
        "ai.engage",
        EngageParams(lead_id=lead.lead_id, message_id=message_id),
        company_id=lead.company_id,
        lead_id=lead.lead_id,
    )
    return job.id


async def finished_job(pool: asyncpg.Pool, job_id: uuid.UUID, wait: float = 30.0) -> Any:
    """The job's row once it completed or was dead-lettered (within `wait` seconds)."""
    return await eventually(
        lambda: pool.fetchrow(
            "SELECT status, attempts, last_error, result FROM jobs WHERE id = $1", job_id
        ),
        lambda row: row is not None and row["status"] in ("completed", "dlq"),
        timeout=wait,
    )


@asynccontextmanager
async def engage_worker(
    plat: Platform, settings: EngageSettings, *, concurrency: int = 4
) -> AsyncIterator[Worker]:
    """Engage's handlers, built by its app's own factory, running in this process."""
    async with AsyncExitStack() as stack:
        handlers = await make_handlers(settings)(plat, stack)
        worker = Worker(
            service="engage",
            bus=plat.bus,
            nc=plat.nc,
            handlers=handlers,
            retry_schedule=settings.retry_schedule,
            concurrency=concurrency,
            ack_wait=settings.ack_wait_seconds,
            poll_seconds=settings.worker_poll_seconds,
        )
        await worker.start()
        try:
            yield worker
        finally:
            await worker.stop()
