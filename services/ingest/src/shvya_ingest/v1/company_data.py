"""A company's templates, AI model settings, suppressions and audit trail.

GET/POST /v1/templates, GET/PATCH/DELETE /v1/templates/{id}
GET/PUT  /v1/ai-model
GET/POST /v1/suppressions, DELETE /v1/suppressions/{id}?reason=...
GET      /v1/events?type=&lead_id=&since=&cursor=&limit=
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from shvya_common.contracts.events import EventType
from shvya_common.events import record_event
from shvya_ingest import examples as ex
from shvya_ingest.auth import AdminCompany, AgentCompany, PrincipalDep, audit
from shvya_ingest.phone import AddressError, normalise_email, normalise_phone
from shvya_ingest.v1.common import (
    ERRORS,
    V1,
    Cursor,
    IngestDep,
    LeadFilter,
    Limit,
    Order,
    Page,
    SuppressionId,
    TemplateId,
    decode_cursor,
    limit_param,
    not_found,
    order_sql,
    page_of,
)

router = APIRouter(
    prefix="/v1", dependencies=V1, tags=["templates, AI, suppressions, events"], responses=ERRORS
)

TemplateStatus = Literal["approved", "pending", "rejected", "paused", "disabled"]


class TemplateIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "follow_up",
                    "channel": "whatsapp_cloud",
                    "language": "en_US",
                    "body": "Hi {{1}}, still interested in our offer?",
                    "status": "approved",
                }
            ]
        }
    )

    name: str = Field(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_.\- ]+$")
    channel: Literal["whatsapp_cloud", "whatsapp_web", "email"]
    language: str = Field("en_US", min_length=2, max_length=15)
    subject: str | None = Field(None, max_length=998, description="Email subject.")
    body: str = Field(min_length=1, max_length=32_768)
    status: TemplateStatus = Field(
        "approved",
        description="WhatsApp approval status (kept in step by the template sync); others: "
        "approved.",
    )


class TemplatePatch(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"body": "Hi {{1}}, your quote is ready: {{2}}"}, {"status": "paused"}
        )
    )

    subject: str | None = Field(None, max_length=998)
    body: str | None = Field(None, min_length=1, max_length=32_768)
    status: TemplateStatus | None = None


class TemplateOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.TEMPLATE_ID,
                "name": "quote_ready",
                "channel": "whatsapp_cloud",
                "language": "en",
                "subject": None,
                "body": "Hi {{1}}, your quote is ready: {{2}}",
                "status": "approved",
                "created_at": ex.CREATED,
            }
        )
    )

    id: uuid.UUID
    name: str
    channel: str
    language: str
    subject: str | None
    body: str
    status: str
    created_at: datetime


_TEMPLATE = "id, name, channel, language, subject, body, status, created_at"


@router.get("/templates", response_model=list[TemplateOut], responses=ex.listed(TemplateOut))
async def list_templates(
    company_id: AgentCompany,
    ingest: IngestDep,
    channel: Annotated[
        str | None,
        Query(description="Only templates of this channel: whatsapp_cloud, whatsapp_web, email."),
    ] = None,
) -> list[TemplateOut]:
    rows = await ingest.plat.pool.fetch(
        f"SELECT {_TEMPLATE} FROM templates WHERE company_id = $1"
        " AND ($2::text IS NULL OR channel = $2) ORDER BY name, language",
        company_id,
        channel,
    )
    return [TemplateOut(**dict(r)) for r in rows]


@router.post("/templates", response_model=TemplateOut, status_code=201)
async def add_template(
    body: TemplateIn, company_id: AdminCompany, ingest: IngestDep
) -> TemplateOut:
    try:
        row = await ingest.plat.pool.fetchrow(
            "INSERT INTO templates (company_id, name, channel, language, subject, body, status)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_TEMPLATE}",
            company_id,
            body.name,
            body.channel,
            body.language,
            body.subject,
            body.body,
            body.status,
        )
    except asyncpg.UniqueViolationError:
        raise HTTPException(409, "a template with this name, channel and language exists") from None
    return TemplateOut(**dict(row))


@router.get("/templates/{template_id}", response_model=TemplateOut)
async def get_template(
    template_id: TemplateId, company_id: AgentCompany, ingest: IngestDep
) -> TemplateOut:
    row = await ingest.plat.pool.fetchrow(
        f"SELECT {_TEMPLATE} FROM templates WHERE id = $1 AND company_id = $2",
        template_id,
        company_id,
    )
    if row is None:
        raise not_found("template", template_id)
    return TemplateOut(**dict(row))


@router.patch("/templates/{template_id}", response_model=TemplateOut)
async def patch_template(
    template_id: TemplateId, body: TemplatePatch, company_id: AdminCompany, ingest: IngestDep
) -> TemplateOut:
    row = await ingest.plat.pool.fetchrow(
        "UPDATE templates SET subject = coalesce($3, subject), body = coalesce($4, body),"
        " status = coalesce($5, status)"
        f" WHERE id = $1 AND company_id = $2 RETURNING {_TEMPLATE}",
        template_id,
        company_id,
        body.subject,
        body.body,
        body.status,
    )
    if row is None:
        raise not_found("template", template_id)
    return TemplateOut(**dict(row))


@router.delete("/templates/{template_id}", status_code=204)
async def delete_template(
    template_id: TemplateId, company_id: AdminCompany, ingest: IngestDep
) -> Response:
    gone = await ingest.plat.pool.fetchval(
        "DELETE FROM templates WHERE id = $1 AND company_id = $2 RETURNING id",
        template_id,
        company_id,
    )
    if gone is None:
        raise not_found("template", template_id)
    return Response(status_code=204)


# --- AI model --------------------------------------------------------------------------------


class AiModelIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "gpt-4o-mini",
                    "temperature": 0.3,
                    "max_tokens": 400,
                    "system_prompt": "You are Sol, the assistant of Acme Solar. Be brief.",
                }
            ]
        }
    )

    provider: str = Field("openai", min_length=1, max_length=50)
    model: str = Field(min_length=1, max_length=200, description="Model name the API knows.")
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(500, ge=1, le=32_000, description="Completion tokens per reply.")
    system_prompt: str = Field(
        min_length=1, max_length=20_000, description="Who the assistant is; always sent first."
    )


class AiModelOut(AiModelIn):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"provider": "openai", **ex.example_of(AiModelIn), "updated_at": ex.UPDATED}
        )
    )

    updated_at: datetime


_AI = "provider, model, temperature, max_tokens, system_prompt, updated_at"


@router.get("/ai-model", response_model=AiModelOut)
async def get_ai_model(company_id: AgentCompany, ingest: IngestDep) -> AiModelOut:
    row = await ingest.plat.pool.fetchrow(
        f"SELECT {_AI} FROM ai_models WHERE company_id = $1", company_id
    )
    if row is None:
        raise not_found("AI model of company", company_id)
    return AiModelOut(**dict(row))


@router.put("/ai-model", response_model=AiModelOut)
async def put_ai_model(
    body: AiModelIn, company_id: AdminCompany, ingest: IngestDep, caller: PrincipalDep
) -> AiModelOut:
    """Set the company's model, temperature, max_tokens and system prompt."""
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO ai_models (company_id, provider, model, temperature, max_tokens,"
            " system_prompt) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (company_id) DO UPDATE"
            " SET provider = EXCLUDED.provider, model = EXCLUDED.model,"
            " temperature = EXCLUDED.temperature, max_tokens = EXCLUDED.max_tokens,"
            f" system_prompt = EXCLUDED.system_prompt, updated_at = now() RETURNING {_AI}",
            company_id,
            body.provider,
            body.model,
            body.temperature,
            body.max_tokens,
            body.system_prompt,
        )
        await audit(conn, caller, company_id, "ai_model.updated", {"model": body.model})
    return AiModelOut(**dict(row))


# --- suppressions ------------------------------------------------------------------------------


class SuppressionIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "channel": "email",
                    "address": "ana@example.org",
                    "scope": "marketing",
                    "reason": "asked by phone not to get newsletters",
                }
            ]
        }
    )

    channel: Literal["whatsapp_cloud", "whatsapp_web", "email"]
    address: str = Field(min_length=3, max_length=254)
    scope: Literal["all", "marketing"] = "all"
    reason: str = Field(min_length=1, max_length=500)


class SuppressionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.SUPPRESSION_ID,
                "channel": "email",
                "address": "no.more@example.com",
                "scope": "all",
                "reason": "unsubscribed",
                "created_at": ex.CREATED,
            }
        )
    )

    id: uuid.UUID
    channel: str
    address: str
    scope: str
    reason: str
    created_at: datetime


_SUPPRESSION = "id, channel, address, scope, reason, created_at"


@router.get("/suppressions", response_model=Page[SuppressionOut])
async def list_suppressions(
    request: Request,
    company_id: AgentCompany,
    ingest: IngestDep,
    channel: Annotated[
        str | None,
        Query(
            description="Only suppressions of this channel: whatsapp_cloud, whatsapp_web, email."
        ),
    ] = None,
    address: Annotated[
        str | None,
        Query(
            max_length=254,
            description="Only this address as stored (an E.164 phone number or an email"
            " address), in any case.",
        ),
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[SuppressionOut]:
    limit = limit_param(request, limit)
    after = decode_cursor(cursor)
    rows = await ingest.plat.pool.fetch(
        f"SELECT {_SUPPRESSION} FROM suppressions WHERE company_id = $1"
        " AND ($2::text IS NULL OR channel = $2)"
        " AND ($3::text IS NULL OR lower(address) = lower($3))"
        " AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::uuid))"
        " ORDER BY created_at, id LIMIT $6",
        company_id,
        channel,
        address,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
    )
    return page_of(list(rows), limit, lambda r: SuppressionOut(**dict(r)))


def _normal(channel: str, address: str) -> str:
    try:
        return normalise_email(address) if channel == "email" else normalise_phone(address, None)
    except AddressError as err:
        raise HTTPException(422, str(err)) from err


@router.post("/suppressions", response_model=SuppressionOut, status_code=201)
async def add_suppression(
    body: SuppressionIn, company_id: AgentCompany, ingest: IngestDep, caller: PrincipalDep
) -> SuppressionOut:
    address = _normal(body.channel, body.address)
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO suppressions (company_id, channel, address, scope, reason)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (company_id, channel, address, scope)"
            f" DO UPDATE SET reason = EXCLUDED.reason RETURNING {_SUPPRESSION}",
            company_id,
            body.channel,
            address,
            body.scope,
            body.reason,
        )
        await audit(
            conn,
            caller,
            company_id,
            "suppression.added",
            {"channel": body.channel, "scope": body.scope, "reason": body.reason},
        )
    return SuppressionOut(**dict(row))


@router.delete("/suppressions/{suppression_id}", status_code=204)
async def remove_suppression(
    suppression_id: SuppressionId,
    company_id: AdminCompany,
    ingest: IngestDep,
    caller: PrincipalDep,
    reason: Annotated[str, Query(min_length=1, max_length=500, description="Why it is lifted.")],
) -> Response:
    """Lift a suppression (e.g. the lead opted in again); the reason goes in the audit trail."""
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "DELETE FROM suppressions WHERE id = $1 AND company_id = $2 RETURNING channel, scope",
            suppression_id,
            company_id,
        )
        if row is None:
            raise not_found("suppression", suppression_id)
        await audit(
            conn,
            caller,
            company_id,
            "suppression.removed",
            {"channel": row["channel"], "scope": row["scope"], "reason": reason},
        )
    return Response(status_code=204)


# --- events --------------------------------------------------------------------------------------


class EventOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.EVENT_ID,
                "type": "lead.stage_changed",
                "lead_id": ex.LEAD_ID,
                "payload": {
                    "from_stage_id": ex.STAGE_IDS[0],
                    "from": "New",
                    "to_stage_id": ex.STAGE_IDS[1],
                    "to": "Qualified",
                    "by": "user:rita@acme.example",
                },
                "created_at": ex.UPDATED,
            }
        )
    )

    id: uuid.UUID
    type: str
    lead_id: uuid.UUID | None
    payload: dict[str, Any]
    created_at: datetime


@router.get("/events", response_model=Page[EventOut])
async def list_events(
    request: Request,
    company_id: AgentCompany,
    ingest: IngestDep,
    type: Annotated[list[str], Query(max_length=20, description="One or more types.")] = [],  # noqa: B006
    lead_id: LeadFilter = None,
    since: Annotated[
        datetime | None, Query(description="Only events at or after this time (ISO 8601).")
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
    order: Order = "oldest",
) -> Page[EventOut]:
    """The audit trail, oldest first (or newest first): every message, send, stage move, admin
    action, ... (events past the hot period are read from the monthly archive, `events_all`)."""
    limit = limit_param(request, limit)
    unknown = [t for t in type if t not in EventType._value2member_map_]
    if unknown:
        raise HTTPException(422, f"unknown event type(s): {', '.join(unknown)}")
    after = decode_cursor(cursor)
    beyond, direction = order_sql(order)
    rows = await ingest.plat.pool.fetch(
        "SELECT id, type, lead_id, payload, created_at FROM events_all WHERE company_id = $1"
        " AND (cardinality($2::text[]) = 0 OR type = ANY($2::text[]))"
        " AND ($3::uuid IS NULL OR lead_id = $3) AND ($4::timestamptz IS NULL OR created_at >= $4)"
        f" AND ($5::timestamptz IS NULL OR (created_at, id) {beyond} ($5, $6::uuid))"
        f" ORDER BY created_at{direction}, id{direction} LIMIT $7",
        company_id,
        type,
        lead_id,
        since,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
    )
    return page_of(list(rows), limit, lambda r: EventOut(**dict(r)))


__all__ = ["record_event", "router"]
