"""Admin routes for the AI side: ask for a lead's summary, read a lead with its summary and
follow-up state, and read or set a company's model configuration (ai_models).

All of them sit under /admin and need the admin bearer token. A summary request only enqueues
ai.summary (engage does the work) and answers 202 with the job's id; the result appears in the
lead's `attributes.summary`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException
from pydantic import BaseModel, Field

from shvya_common.contracts import SummaryParams
from shvya_ingest.api import IngestDep, require_admin

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], tags=["ai"])


class SummaryRequested(BaseModel):
    job_id: uuid.UUID
    lead_id: uuid.UUID
    status: str
    created: bool


class LeadOut(BaseModel):
    id: uuid.UUID
    company_id: uuid.UUID
    contact_name: str | None
    phone_e164: str | None
    email: str | None
    stage: str | None
    attributes: dict[str, Any]
    summary: dict[str, Any] | None
    followup: dict[str, Any] | None
    messages: int
    ai_turns: int
    last_inbound_at: datetime | None
    last_outbound_at: datetime | None


class AiModelIn(BaseModel):
    provider: str = Field("openai", min_length=1, max_length=50)
    model: str = Field(min_length=1, max_length=200, description="Model name the API knows.")
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(500, ge=1, le=32_000, description="Completion tokens per reply.")
    system_prompt: str = Field(
        min_length=1, max_length=20_000, description="Who the assistant is; always sent first."
    )


class AiModelOut(AiModelIn):
    company_id: uuid.UUID
    updated_at: datetime


@router.post("/leads/{lead_id}/summary", status_code=202, response_model=SummaryRequested)
async def request_summary(
    lead_id: uuid.UUID,
    ingest: IngestDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> SummaryRequested:
    """Enqueue ai.summary for the lead; an `Idempotency-Key` header makes retries safe."""
    company_id = await ingest.plat.pool.fetchval(
        "SELECT company_id FROM leads WHERE id = $1", lead_id
    )
    if company_id is None:
        raise HTTPException(404, f"lead {lead_id} does not exist")
    key = f"summary-api:{lead_id}:{idempotency_key}" if idempotency_key else None
    job = await ingest.plat.bus.enqueue_job(
        "ai.summary",
        SummaryParams(lead_id=lead_id, reason="api"),
        key,
        company_id=company_id,
        lead_id=lead_id,
    )
    return SummaryRequested(job_id=job.id, lead_id=lead_id, status=job.status, created=job.created)


@router.get("/leads/{lead_id}", response_model=LeadOut)
async def get_lead(lead_id: uuid.UUID, ingest: IngestDep) -> LeadOut:
    """The lead with its attributes, AI summary and bump-up state."""
    row = await ingest.plat.pool.fetchrow(
        """
        SELECT l.id, l.company_id, l.contact_name, l.phone_e164, l.email, s.name AS stage,
               l.attributes, l.last_inbound_at, l.last_outbound_at,
               (SELECT count(*) FROM messages m WHERE m.lead_id = l.id) AS messages,
               coalesce((SELECT turns FROM ai_sessions a WHERE a.lead_id = l.id), 0) AS ai_turns
        FROM leads l LEFT JOIN stages s ON s.id = l.stage_id
        WHERE l.id = $1
        """,
        lead_id,
    )
    if row is None:
        raise HTTPException(404, f"lead {lead_id} does not exist")
    attributes = row["attributes"] or {}
    return LeadOut(
        **{
            k: row[k]
            for k in (
                "id",
                "company_id",
                "contact_name",
                "phone_e164",
                "email",
                "stage",
                "last_inbound_at",
                "last_outbound_at",
                "messages",
                "ai_turns",
            )
        },
        attributes=attributes,
        summary=attributes.get("summary"),
        followup=attributes.get("followup"),
    )


@router.get("/companies/{company_id}/ai-model", response_model=AiModelOut)
async def get_ai_model(company_id: uuid.UUID, ingest: IngestDep) -> AiModelOut:
    row = await ingest.plat.pool.fetchrow(
        "SELECT company_id, provider, model, temperature, max_tokens, system_prompt, updated_at"
        " FROM ai_models WHERE company_id = $1",
        company_id,
    )
    if row is None:
        raise HTTPException(404, f"company {company_id} has no model configured")
    return AiModelOut(**dict(row))


@router.put("/companies/{company_id}/ai-model", response_model=AiModelOut)
async def put_ai_model(company_id: uuid.UUID, body: AiModelIn, ingest: IngestDep) -> AiModelOut:
    """Set the company's model, temperature, max_tokens and system prompt."""
    if not await ingest.plat.pool.fetchval("SELECT 1 FROM companies WHERE id = $1", company_id):
        raise HTTPException(404, f"company {company_id} does not exist")
    row = await ingest.plat.pool.fetchrow(
        """
        INSERT INTO ai_models (company_id, provider, model, temperature, max_tokens, system_prompt)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (company_id) DO UPDATE
           SET provider = EXCLUDED.provider, model = EXCLUDED.model,
               temperature = EXCLUDED.temperature, max_tokens = EXCLUDED.max_tokens,
               system_prompt = EXCLUDED.system_prompt, updated_at = now()
        RETURNING company_id, provider, model, temperature, max_tokens, system_prompt, updated_at
        """,
        company_id,
        body.provider,
        body.model,
        body.temperature,
        body.max_tokens,
        body.system_prompt,
    )
    assert row is not None
    return AiModelOut(**dict(row))
