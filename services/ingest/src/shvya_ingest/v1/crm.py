"""The CRM: pipelines and stages, leads, conversations and hand-off, all scoped to the caller's
company (an id of another company is not found).

    GET/POST /v1/pipelines, PATCH /v1/pipelines/{id}, POST /v1/pipelines/{id}/archive
    POST /v1/pipelines/{id}/stages, POST /v1/pipelines/{id}/stages/order,
    PATCH /v1/stages/{id}, POST /v1/stages/{id}/archive
    GET/POST /v1/leads, GET/PATCH/DELETE /v1/leads/{id}
    POST /v1/leads/{id}/stage, POST /v1/leads/{id}/merge
    GET/POST /v1/leads/{id}/messages        the conversation; a manual send through dispatch
    POST/DELETE /v1/leads/{id}/handoff      an agent takes over (AI replies stop) / hands back
    POST /v1/leads/{id}/summary             enqueue ai.summary

Writes go through one statement or one unit of work each; a stage move writes
`lead.stage_changed`, a merge `lead.merged`, an erase `lead.erased` (GDPR: the lead, its messages
and personal data are deleted; the event keeps only ids and counts).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import structlog
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from shvya_common.contracts import SendParams, SummaryParams
from shvya_common.contracts.events import EventType
from shvya_common.events import record_event
from shvya_common.sequences import enrolments
from shvya_common.storage import MediaNotFound
from shvya_ingest import examples as ex
from shvya_ingest.auth import AdminCompany, AgentCompany, PrincipalDep, audit
from shvya_ingest.phone import AddressError, normalise_email, normalise_phone
from shvya_ingest.v1.common import (
    ERRORS,
    V1,
    Cursor,
    IngestDep,
    LeadId,
    Limit,
    Order,
    Page,
    PipelineId,
    StageFilter,
    StageId,
    decode_cursor,
    limit_param,
    not_found,
    order_sql,
    page_of,
)
from shvya_ingest.v1.identity import create_pipeline

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/v1", dependencies=V1, tags=["CRM"], responses=ERRORS)

Channel = Literal["whatsapp_cloud", "whatsapp_web", "email", "log"]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="Any string up to 200 characters: a retry with the same key for the same"
        " lead does the work once.",
    ),
]


# --- pipelines and stages ----------------------------------------------------------------


class StageOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"id": ex.STAGE_IDS[0], "name": "New", "position": 1, "archived": False}
        )
    )

    id: uuid.UUID
    name: str
    position: int
    archived: bool


class PipelineOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.PIPELINE_ID,
                "name": "Sales",
                "is_default": True,
                "archived": False,
                "stages": [
                    {"id": ex.STAGE_IDS[0], "name": "New", "position": 1, "archived": False},
                    {"id": ex.STAGE_IDS[1], "name": "Qualified", "position": 2, "archived": False},
                    {"id": ex.STAGE_IDS[2], "name": "Won", "position": 3, "archived": False},
                ],
            }
        )
    )

    id: uuid.UUID
    name: str
    is_default: bool
    archived: bool
    stages: list[StageOut]


class PipelineIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "Partners", "stages": ["Lead", "Demo", "Won"]}]}
    )

    name: str = Field(min_length=1, max_length=100)
    stages: list[str] = Field(
        default_factory=lambda: ["New", "Contacted", "Qualified", "Proposal", "Closed"],
        min_length=1,
        max_length=50,
    )


class NameIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "Negotiation"}]})

    name: str = Field(min_length=1, max_length=100)


class StageOrderIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"stage_ids": [ex.STAGE_IDS[1], ex.STAGE_IDS[0], ex.STAGE_IDS[2]]}
        )
    )

    stage_ids: list[uuid.UUID] = Field(
        min_length=1, description="Every active stage of the pipeline, in the new order."
    )


async def _pipelines(
    conn: Any, company_id: uuid.UUID, pipeline_id: uuid.UUID | None = None
) -> list[PipelineOut]:
    rows = await conn.fetch(
        "SELECT p.id, p.name, p.is_default, p.archived_at IS NOT NULL AS archived,"
        " coalesce(jsonb_agg(jsonb_build_object('id', s.id, 'name', s.name, 'position',"
        " s.position, 'archived', s.archived_at IS NOT NULL) ORDER BY s.position)"
        " FILTER (WHERE s.id IS NOT NULL), '[]') AS stages"
        " FROM pipelines p LEFT JOIN stages s ON s.pipeline_id = p.id"
        " WHERE p.company_id = $1 AND ($2::uuid IS NULL OR p.id = $2)"
        " GROUP BY p.id ORDER BY p.created_at",
        company_id,
        pipeline_id,
    )
    return [
        PipelineOut(**{**dict(r), "stages": [StageOut(**s) for s in r["stages"]]}) for r in rows
    ]


async def _one_pipeline(conn: Any, company_id: uuid.UUID, pipeline_id: uuid.UUID) -> PipelineOut:
    found = await _pipelines(conn, company_id, pipeline_id)
    if not found:
        raise not_found("pipeline", pipeline_id)
    return found[0]


@router.get("/pipelines", response_model=list[PipelineOut], responses=ex.listed(PipelineOut))
async def list_pipelines(company_id: AgentCompany, ingest: IngestDep) -> list[PipelineOut]:
    return await _pipelines(ingest.plat.pool, company_id)


@router.post("/pipelines", response_model=PipelineOut, status_code=201)
async def add_pipeline(
    body: PipelineIn, company_id: AdminCompany, ingest: IngestDep, caller: PrincipalDep
) -> PipelineOut:
    if len({s.lower() for s in body.stages}) != len(body.stages):
        raise HTTPException(422, "stage names must be distinct")
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        pipeline_id = await create_pipeline(conn, company_id, body.name, body.stages, default=False)
        await audit(conn, caller, company_id, "pipeline.created", {"pipeline": str(pipeline_id)})
        return await _one_pipeline(conn, company_id, pipeline_id)


@router.patch("/pipelines/{pipeline_id}", response_model=PipelineOut)
async def rename_pipeline(
    pipeline_id: PipelineId, body: NameIn, company_id: AdminCompany, ingest: IngestDep
) -> PipelineOut:
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        done = await conn.fetchval(
            "UPDATE pipelines SET name = $3 WHERE id = $1 AND company_id = $2 RETURNING id",
            pipeline_id,
            company_id,
            body.name,
        )
        if done is None:
            raise not_found("pipeline", pipeline_id)
        return await _one_pipeline(conn, company_id, pipeline_id)


@router.post("/pipelines/{pipeline_id}/archive", response_model=PipelineOut)
async def archive_pipeline(
    pipeline_id: PipelineId, company_id: AdminCompany, ingest: IngestDep
) -> PipelineOut:
    """Archive a pipeline (the default one cannot be: new leads go there)."""
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT is_default FROM pipelines WHERE id = $1 AND company_id = $2",
            pipeline_id,
            company_id,
        )
        if row is None:
            raise not_found("pipeline", pipeline_id)
        if row["is_default"]:
            raise HTTPException(409, "the default pipeline cannot be archived")
        await conn.execute(
            "UPDATE pipelines SET archived_at = coalesce(archived_at, now()) WHERE id = $1",
            pipeline_id,
        )
        return await _one_pipeline(conn, company_id, pipeline_id)


@router.post("/pipelines/{pipeline_id}/stages", response_model=PipelineOut, status_code=201)
async def add_stage(
    pipeline_id: PipelineId, body: NameIn, company_id: AdminCompany, ingest: IngestDep
) -> PipelineOut:
    """Add a stage at the end of the pipeline."""
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        owner = await conn.fetchval(
            "SELECT company_id FROM pipelines WHERE id = $1 FOR UPDATE", pipeline_id
        )
        if owner != company_id:
            raise not_found("pipeline", pipeline_id)
        try:
            await conn.execute(
                "INSERT INTO stages (pipeline_id, name, position) SELECT $1, $2,"
                " coalesce(max(position), 0) + 1 FROM stages WHERE pipeline_id = $1",
                pipeline_id,
                body.name,
            )
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, f"the pipeline has a stage named {body.name!r}") from None
        return await _one_pipeline(conn, company_id, pipeline_id)


@router.post("/pipelines/{pipeline_id}/stages/order", response_model=PipelineOut)
async def order_stages(
    pipeline_id: PipelineId, body: StageOrderIn, company_id: AdminCompany, ingest: IngestDep
) -> PipelineOut:
    """Reorder the active stages; archived ones keep their places after them."""
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        owner = await conn.fetchval(
            "SELECT company_id FROM pipelines WHERE id = $1 FOR UPDATE", pipeline_id
        )
        if owner != company_id:
            raise not_found("pipeline", pipeline_id)
        active = await conn.fetch(
            "SELECT id FROM stages WHERE pipeline_id = $1 AND archived_at IS NULL", pipeline_id
        )
        if sorted(r["id"] for r in active) != sorted(body.stage_ids) or len(
            set(body.stage_ids)
        ) != len(body.stage_ids):
            raise HTTPException(422, "stage_ids must list every active stage of the pipeline once")
        # Positions are unique: park them below zero first, then give the new order.
        await conn.execute(
            "UPDATE stages SET position = -position WHERE pipeline_id = $1", pipeline_id
        )
        await conn.execute(
            "UPDATE stages s SET position = o.pos FROM unnest($2::uuid[]) WITH ORDINALITY"
            " AS o(id, pos) WHERE s.id = o.id AND s.pipeline_id = $1",
            pipeline_id,
            body.stage_ids,
        )
        await conn.execute(
            "UPDATE stages s SET position = $2 + r.n FROM (SELECT id, row_number() OVER"
            " (ORDER BY position) AS n FROM stages WHERE pipeline_id = $1"
            " AND archived_at IS NOT NULL) r WHERE s.id = r.id",
            pipeline_id,
            len(body.stage_ids),
        )
        return await _one_pipeline(conn, company_id, pipeline_id)


async def _stage_pipeline(conn: Any, company_id: uuid.UUID, stage_id: uuid.UUID) -> uuid.UUID:
    pipeline_id: uuid.UUID | None = await conn.fetchval(
        "SELECT s.pipeline_id FROM stages s JOIN pipelines p ON p.id = s.pipeline_id"
        " WHERE s.id = $1 AND p.company_id = $2",
        stage_id,
        company_id,
    )
    if pipeline_id is None:
        raise not_found("stage", stage_id)
    return pipeline_id


@router.patch("/stages/{stage_id}", response_model=PipelineOut)
async def rename_stage(
    stage_id: StageId, body: NameIn, company_id: AdminCompany, ingest: IngestDep
) -> PipelineOut:
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        pipeline_id = await _stage_pipeline(conn, company_id, stage_id)
        try:
            await conn.execute("UPDATE stages SET name = $2 WHERE id = $1", stage_id, body.name)
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, f"the pipeline has a stage named {body.name!r}") from None
        return await _one_pipeline(conn, company_id, pipeline_id)


@router.post("/stages/{stage_id}/archive", response_model=PipelineOut)
async def archive_stage(
    stage_id: StageId, company_id: AdminCompany, ingest: IngestDep
) -> PipelineOut:
    """Archive a stage: leads may no longer move into it (those in it stay)."""
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        pipeline_id = await _stage_pipeline(conn, company_id, stage_id)
        first = await conn.fetchval(
            "SELECT id FROM stages WHERE pipeline_id = $1 AND archived_at IS NULL"
            " ORDER BY position LIMIT 1",
            pipeline_id,
        )
        if first == stage_id:
            raise HTTPException(409, "the first stage is where new leads go; it cannot be archived")
        await conn.execute(
            "UPDATE stages SET archived_at = coalesce(archived_at, now()) WHERE id = $1", stage_id
        )
        return await _one_pipeline(conn, company_id, pipeline_id)


# --- leads -------------------------------------------------------------------------------


class LeadOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.LEAD_ID,
                **ex.CONTACT_FIELDS,
                "timezone": "America/Los_Angeles",
                "pipeline_id": ex.PIPELINE_ID,
                "stage_id": ex.STAGE_IDS[1],
                "stage": "Qualified",
                "attributes": {"plan": "annual", "budget": 5000},
                "summary": {
                    "summary": "Ana asked for a quote for a 6 kW rooftop system.",
                    "key_points": ["6 kW", "installation in June"],
                    "sentiment": "positive",
                    "next_action": "Send the quote",
                },
                "handoff_at": None,
                "handoff_by": None,
                "channels": ["whatsapp_cloud", "email"],
                "last_inbound_at": ex.UPDATED,
                "last_outbound_at": ex.UPDATED,
                "created_at": ex.CREATED,
            }
        )
    )

    id: uuid.UUID
    contact_name: str | None
    phone_e164: str | None
    email: str | None
    timezone: str | None
    pipeline_id: uuid.UUID | None
    stage_id: uuid.UUID | None
    stage: str | None
    attributes: dict[str, Any]
    summary: dict[str, Any] | None
    handoff_at: datetime | None
    handoff_by: str | None
    channels: list[str]
    last_inbound_at: datetime | None
    last_outbound_at: datetime | None
    created_at: datetime


class LeadIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "contact_name": "Ana Lopez",
                    "phone": "+4915112345678",
                    "attributes": {"plan": "annual"},
                }
            ]
        }
    )

    contact_name: str | None = Field(None, max_length=200)
    phone: str | None = Field(None, max_length=40, description="E.164, e.g. +4915112345678.")
    email: str | None = Field(None, max_length=254)
    timezone: str | None = Field(None, max_length=64)
    attributes: dict[str, Any] = Field(default_factory=dict)
    stage_id: uuid.UUID | None = None


class LeadPatch(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"attributes": {"budget": 5000}}]})

    contact_name: str | None = Field(None, max_length=200)
    phone: str | None = Field(None, max_length=40)
    email: str | None = Field(None, max_length=254)
    timezone: str | None = Field(None, max_length=64)
    attributes: dict[str, Any] | None = Field(
        None, description="Merged into the lead's attributes (a key set to null is removed)."
    )


class StageMoveIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"stage": "Qualified"}]})

    stage_id: uuid.UUID | None = None
    stage: str | None = Field(
        None, max_length=100, description="A stage name of the lead's pipeline."
    )


class MergeIn(BaseModel):
    model_config = ConfigDict(json_schema_extra=ex.examples({"duplicate_id": ex.DUPLICATE_LEAD_ID}))

    duplicate_id: uuid.UUID = Field(description="The lead folded into this one, then removed.")


_LEAD = """
SELECT l.id, l.contact_name, l.phone_e164, l.email, l.timezone, l.pipeline_id, l.stage_id,
       s.name AS stage, l.attributes, l.handoff_at, l.handoff_by, l.last_inbound_at,
       l.last_outbound_at, l.created_at,
       coalesce((SELECT array_agg(DISTINCT c.channel) FROM lead_contacts c
                 WHERE c.lead_id = l.id), '{}') AS channels
FROM leads l LEFT JOIN stages s ON s.id = l.stage_id
"""


def _lead(row: Any) -> LeadOut:
    attributes = dict(row["attributes"] or {})
    summary = attributes.pop("summary", None)
    return LeadOut(**{**dict(row), "attributes": attributes, "summary": summary})


async def _get_lead(conn: Any, company_id: uuid.UUID, lead_id: uuid.UUID) -> LeadOut:
    row = await conn.fetchrow(_LEAD + " WHERE l.id = $1 AND l.company_id = $2", lead_id, company_id)
    if row is None:
        raise not_found("lead", lead_id)
    return _lead(row)


def _attribute_filters(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, wanted = value.partition(":")
        if not sep or not key:
            raise HTTPException(422, "attribute filters are key:value, e.g. attribute=plan:annual")
        out[key] = wanted
    return out


@router.get("/leads", response_model=Page[LeadOut])
async def list_leads(
    request: Request,
    company_id: AgentCompany,
    ingest: IngestDep,
    stage_id: StageFilter = None,
    stage: Annotated[
        str | None,
        Query(max_length=100, description="Only leads in a stage of this name (any case)."),
    ] = None,
    channel: Annotated[
        Channel | None, Query(description="Only leads with a contact on this channel.")
    ] = None,
    attribute: Annotated[
        list[str],
        Query(
            max_length=20,
            description="`key:value`, e.g. `plan:annual`: only leads whose attribute has this"
            " value; repeat for several (all must match, up to 20).",
        ),
    ] = [],  # noqa: B006
    q: Annotated[str | None, Query(max_length=200, description="Name, phone or email.")] = None,
    active_since: Annotated[
        datetime | None,
        Query(description="Only leads whose last message (either way) is at or after this time."),
    ] = None,
    active_before: Annotated[
        datetime | None,
        Query(description="Only leads whose last message (either way) is before this time."),
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[LeadOut]:
    """Leads oldest first, filtered; `attribute=plan:annual` matches an attribute's value."""
    limit = limit_param(request, limit)
    after = decode_cursor(cursor)
    rows = await ingest.plat.pool.fetch(
        _LEAD
        + """
        WHERE l.company_id = $1
          AND ($2::uuid IS NULL OR l.stage_id = $2)
          AND ($3::text IS NULL OR lower(s.name) = lower($3))
          AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM lead_contacts c
                                           WHERE c.lead_id = l.id AND c.channel = $4))
          AND l.attributes @> $5::jsonb
          AND ($6::text IS NULL OR (coalesce(l.contact_name, '') || ' '
               || coalesce(l.phone_e164, '') || ' ' || coalesce(l.email, ''))
               ILIKE '%' || $6 || '%')
          AND ($7::timestamptz IS NULL
               OR greatest(l.last_inbound_at, l.last_outbound_at) >= $7)
          AND ($8::timestamptz IS NULL
               OR greatest(l.last_inbound_at, l.last_outbound_at) < $8)
          AND ($9::timestamptz IS NULL OR (l.created_at, l.id) > ($9, $10::uuid))
        ORDER BY l.created_at, l.id LIMIT $11
        """,
        company_id,
        stage_id,
        stage,
        channel,
        _attribute_filters(attribute),
        q.replace("%", r"\%").replace("_", r"\_") if q else None,
        active_since,
        active_before,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
    )
    return page_of(list(rows), limit, _lead)


def _addresses(
    phone: str | None, email: str | None, region: str | None
) -> tuple[str | None, str | None]:
    try:
        return (
            normalise_phone(phone, region) if phone else None,
            normalise_email(email) if email else None,
        )
    except AddressError as err:
        raise HTTPException(422, str(err)) from err


@router.post("/leads", response_model=LeadOut, status_code=201)
async def add_lead(body: LeadIn, company_id: AgentCompany, ingest: IngestDep) -> LeadOut:
    phone, email = _addresses(body.phone, body.email, ingest.settings.default_phone_region)
    if phone is None and email is None:
        raise HTTPException(422, "a lead needs a phone or an email")
    route = await ingest.route_for(company_id)
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        stage_id = route.new_stage_id
        pipeline_id = route.pipeline_id
        if body.stage_id is not None:
            pipeline_id = await _stage_pipeline(conn, company_id, body.stage_id)
            stage_id = body.stage_id
        try:
            lead_id = await conn.fetchval(
                "INSERT INTO leads (company_id, pipeline_id, stage_id, phone_e164, email,"
                " contact_name, timezone, attributes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " RETURNING id",
                company_id,
                pipeline_id,
                stage_id,
                phone,
                email,
                body.contact_name,
                body.timezone,
                body.attributes,
            )
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, "a lead with this phone or email exists") from None
        for channel, address in (("whatsapp_cloud", phone), ("email", email)):
            if address:
                await conn.execute(
                    "INSERT INTO lead_contacts (lead_id, channel, address, is_primary)"
                    " VALUES ($1, $2, $3, true) ON CONFLICT DO NOTHING",
                    lead_id,
                    channel,
                    address,
                )
        await record_event(conn, company_id, lead_id, EventType.LEAD_CREATED, {"source": "api"})
        return await _get_lead(conn, company_id, lead_id)


@router.get("/leads/{lead_id}", response_model=LeadOut)
async def get_lead(lead_id: LeadId, company_id: AgentCompany, ingest: IngestDep) -> LeadOut:
    return await _get_lead(ingest.plat.pool, company_id, lead_id)


@router.patch("/leads/{lead_id}", response_model=LeadOut)
async def patch_lead(
    lead_id: LeadId, body: LeadPatch, company_id: AgentCompany, ingest: IngestDep
) -> LeadOut:
    phone, email = _addresses(body.phone, body.email, ingest.settings.default_phone_region)
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        try:
            done = await conn.fetchval(
                "UPDATE leads SET contact_name = coalesce($3, contact_name),"
                " phone_e164 = coalesce($4, phone_e164), email = coalesce($5, email),"
                " timezone = coalesce($6, timezone),"
                " attributes = jsonb_strip_nulls(attributes || coalesce($7, '{}'::jsonb)),"
                " updated_at = now() WHERE id = $1 AND company_id = $2 RETURNING id",
                lead_id,
                company_id,
                body.contact_name,
                phone,
                email,
                body.timezone,
                body.attributes,
            )
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, "another lead has this phone or email") from None
        if done is None:
            raise not_found("lead", lead_id)
        return await _get_lead(conn, company_id, lead_id)


@router.post("/leads/{lead_id}/stage", response_model=LeadOut)
async def move_stage(
    lead_id: LeadId,
    body: StageMoveIn,
    company_id: AgentCompany,
    ingest: IngestDep,
    caller: PrincipalDep,
) -> LeadOut:
    """Move the lead to a stage of its pipeline (by id or name); writes lead.stage_changed."""
    if (body.stage_id is None) == (body.stage is None):
        raise HTTPException(422, "give exactly one of stage_id or stage")
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        lead = await conn.fetchrow(
            "SELECT l.pipeline_id, l.stage_id, s.name FROM leads l"
            " LEFT JOIN stages s ON s.id = l.stage_id"
            " WHERE l.id = $1 AND l.company_id = $2 FOR UPDATE OF l",
            lead_id,
            company_id,
        )
        if lead is None:
            raise not_found("lead", lead_id)
        target = await conn.fetchrow(
            "SELECT s.id, s.name FROM stages s JOIN pipelines p ON p.id = s.pipeline_id"
            " WHERE p.company_id = $1 AND s.archived_at IS NULL"
            " AND ($2::uuid IS NULL OR s.id = $2)"
            " AND ($3::text IS NULL OR (lower(s.name) = lower($3) AND s.pipeline_id = $4))",
            company_id,
            body.stage_id,
            body.stage,
            lead["pipeline_id"],
        )
        if target is None:
            raise not_found("stage", body.stage_id or body.stage)
        if target["id"] != lead["stage_id"]:
            await conn.execute(
                "UPDATE leads SET stage_id = $2, pipeline_id = (SELECT pipeline_id FROM stages"
                " WHERE id = $2), updated_at = now() WHERE id = $1",
                lead_id,
                target["id"],
            )
            await record_event(
                conn,
                company_id,
                lead_id,
                EventType.LEAD_STAGE_CHANGED,
                {
                    "from_stage_id": str(lead["stage_id"]) if lead["stage_id"] else None,
                    "from": lead["name"],
                    "to_stage_id": str(target["id"]),
                    "to": target["name"],
                    "by": caller.actor,
                },
            )
        return await _get_lead(conn, company_id, lead_id)


@router.post("/leads/{lead_id}/merge", response_model=LeadOut)
async def merge_lead(
    lead_id: LeadId,
    body: MergeIn,
    company_id: AgentCompany,
    ingest: IngestDep,
    caller: PrincipalDep,
) -> LeadOut:
    """Fold a duplicate into this lead: its messages, contacts, events and enrolments move
    here, blank fields are filled from it, then it is removed."""
    if body.duplicate_id == lead_id:
        raise HTTPException(422, "a lead cannot be merged into itself")
    async with ingest.plat.bus.unit() as unit:
        conn = unit.conn
        found = await conn.fetchval(
            "SELECT count(*) FROM leads WHERE id = ANY($1::uuid[]) AND company_id = $2",
            [lead_id, body.duplicate_id],
            company_id,
        )
        if found != 2:
            raise not_found("lead", body.duplicate_id if found == 1 else lead_id)
        # A lead is in a sequence at most once: the duplicate's enrolment in a sequence this
        # lead is also in stops (through the sequences' own writer) before the rows move.
        clashes = await conn.fetch(
            "SELECT d.id FROM sequence_enrolments d JOIN sequence_enrolments k"
            " ON k.sequence_id = d.sequence_id AND k.lead_id = $1 AND k.status = ANY($3::text[])"
            " WHERE d.lead_id = $2 AND d.status = ANY($3::text[])",
            lead_id,
            body.duplicate_id,
            enrolments.LIVE,
        )
        if clashes:
            await enrolments.stop(
                unit, [r["id"] for r in clashes], "merged", {"into_lead_id": str(lead_id)}
            )
        await conn.execute("SELECT merge_leads($1, $2)", lead_id, body.duplicate_id)
        await record_event(
            conn,
            company_id,
            lead_id,
            EventType.LEAD_MERGED,
            {"merged_lead_id": str(body.duplicate_id), "by": caller.actor},
        )
        return await _get_lead(conn, company_id, lead_id)


class ErasedOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples({"lead_id": ex.LEAD_ID, "messages": 12, "events": 31})
    )

    lead_id: uuid.UUID
    messages: int
    events: int


@router.delete("/leads/{lead_id}", response_model=ErasedOut)
async def erase_lead(
    lead_id: LeadId, company_id: AdminCompany, ingest: IngestDep, caller: PrincipalDep
) -> ErasedOut:
    """GDPR erasure: delete the lead, its messages (with their revisions, reactions, statuses
    and received media, the stored files included), contacts, events, jobs, timers, enrolments,
    webhook deliveries and the bounces of its email addresses; one `lead.erased` event keeps
    the ids and counts only. Suppressions of its addresses stay: they are what keeps a person
    who opted out from being contacted again."""
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM messages WHERE lead_id = $1) AS messages,"
            " (SELECT count(*) FROM events_all WHERE lead_id = $1) AS events"
            " FROM leads WHERE id = $1 AND company_id = $2 FOR UPDATE",
            lead_id,
            company_id,
        )
        if counts is None:
            raise not_found("lead", lead_id)
        files = await conn.fetchval(_LEAD_FILES, lead_id)
        # A bounce keeps its row when its lead goes (lead_id SET NULL): erase it by address.
        await conn.execute(
            "DELETE FROM email_bounces WHERE company_id = $2 AND (lead_id = $1 OR lower(address)"
            " IN (SELECT lower(email) FROM leads WHERE id = $1 AND email IS NOT NULL"
            "     UNION SELECT lower(address) FROM lead_contacts"
            "     WHERE lead_id = $1 AND channel = 'email'))",
            lead_id,
            company_id,
        )
        # Everything else of the lead goes with it (foreign keys cascade).
        await conn.execute("DELETE FROM leads WHERE id = $1", lead_id)
        # Files are content-addressed per company: one another message still uses stays.
        orphans = await conn.fetchval(_UNUSED_FILES, company_id, files) if files else []
        await record_event(
            conn,
            company_id,
            None,
            EventType.LEAD_ERASED,
            {
                "erased_lead_id": str(lead_id),
                "messages": counts["messages"],
                "events": counts["events"],
                "by": caller.actor,
            },
        )
        await audit(conn, caller, company_id, "lead.erased", {"lead": str(lead_id)})
    for key in orphans:  # after COMMIT: a rolled-back erasure keeps its files
        try:
            await ingest.media.delete(key)
        except (OSError, MediaNotFound) as err:
            log.warning("erased_lead_file_kept", error=type(err).__name__)
    return ErasedOut(lead_id=lead_id, messages=counts["messages"], events=counts["events"])


# The stored files of a lead's messages: WhatsApp media, and email attachments (meta).
_LEAD_FILES = """
SELECT coalesce(array_agg(DISTINCT key), '{}') FROM (
    SELECT i.storage_key AS key FROM inbound_media i JOIN messages m ON m.id = i.message_id
    WHERE m.lead_id = $1 AND i.storage_key IS NOT NULL
    UNION ALL
    SELECT a->>'key' FROM messages m, jsonb_array_elements(
        CASE WHEN jsonb_typeof(m.meta->'attachments') = 'array' THEN m.meta->'attachments'
             ELSE '[]'::jsonb END) a
    WHERE m.lead_id = $1 AND a->>'key' IS NOT NULL
) k
"""
_UNUSED_FILES = """
SELECT coalesce(array_agg(k), '{}') FROM unnest($2::text[]) AS k
WHERE NOT EXISTS (SELECT 1 FROM inbound_media i WHERE i.company_id = $1 AND i.storage_key = k)
  AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.company_id = $1
                    AND m.meta->'attachments' @> jsonb_build_array(jsonb_build_object('key', k)))
"""


# --- conversations and hand-off ----------------------------------------------------------


class MessageOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.MESSAGE_ID,
                "direction": "outbound",
                "channel": "whatsapp_cloud",
                "body": "Hi Ana, the quote for a 6 kW system is on its way.",
                "status": "sent",
                "delivery_status": "read",
                "error": None,
                "purpose": "reply",
                "responder": "openai",
                "meta": {},
                "created_at": ex.CREATED,
                "sent_at": ex.CREATED,
                "delivered_at": ex.UPDATED,
                "read_at": ex.UPDATED,
            }
        )
    )

    id: uuid.UUID
    direction: Literal["inbound", "outbound"]
    channel: str
    body: str
    status: str
    delivery_status: str | None
    error: str | None
    purpose: str | None
    responder: str | None
    meta: dict[str, Any]
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None


class SendIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "Hi Ana, this is Rita from Acme. Happy to help!"}]}
    )

    text: str = Field(min_length=1, max_length=4096)
    channel: Channel | None = Field(
        None, description="Defaults to the channel the lead last wrote on."
    )
    template_id: uuid.UUID | None = None
    template_params: list[str] = Field(default_factory=list, max_length=20)


class SendOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"message_id": ex.MESSAGE_ID, "status": "queued", "channel": "whatsapp_cloud"}
        )
    )

    message_id: uuid.UUID
    status: str
    channel: str


class HandoffOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "lead_id": ex.LEAD_ID,
                "handoff_at": ex.UPDATED,
                "handoff_by": "user:rita@acme.example",
            }
        )
    )

    lead_id: uuid.UUID
    handoff_at: datetime | None
    handoff_by: str | None


def _message(row: Any) -> MessageOut:
    meta = dict(row["meta"] or {})
    return MessageOut(
        **{
            k: row[k]
            for k in (
                "id",
                "direction",
                "channel",
                "body",
                "status",
                "delivery_status",
                "created_at",
                "sent_at",
                "delivered_at",
                "read_at",
            )
        },
        error=row["delivery_error"] or row["last_error"],
        purpose=meta.get("purpose"),
        responder=(meta.get("ai") or {}).get("responder"),
        meta={k: v for k, v in meta.items() if k not in ("ai",)},
    )


@router.get("/leads/{lead_id}/messages", response_model=Page[MessageOut])
async def conversation(
    request: Request,
    lead_id: LeadId,
    company_id: AgentCompany,
    ingest: IngestDep,
    cursor: Cursor = None,
    limit: Limit = 100,
    order: Order = "oldest",
) -> Page[MessageOut]:
    """The lead's messages oldest first (or newest first), with send and delivery statuses."""
    limit = limit_param(request, limit)
    after = decode_cursor(cursor)
    pool = ingest.plat.pool
    if not await pool.fetchval(
        "SELECT 1 FROM leads WHERE id = $1 AND company_id = $2", lead_id, company_id
    ):
        raise not_found("lead", lead_id)
    beyond, direction = order_sql(order)
    rows = await pool.fetch(
        "SELECT id, direction, channel, body, status, delivery_status, delivery_error,"
        " last_error, meta, created_at, sent_at, delivered_at, read_at FROM messages"
        " WHERE lead_id = $1 AND company_id = $2"
        f" AND ($3::timestamptz IS NULL OR (created_at, id) {beyond} ($3, $4::uuid))"
        f" ORDER BY created_at{direction}, id{direction} LIMIT $5",
        lead_id,
        company_id,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
    )
    return page_of(list(rows), limit, _message)


@router.post("/leads/{lead_id}/messages", response_model=SendOut, status_code=202)
async def send_message(
    lead_id: LeadId,
    body: SendIn,
    company_id: AgentCompany,
    ingest: IngestDep,
    caller: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> SendOut:
    """Send a message by hand, through dispatch and every policy of its channel (outside the
    WhatsApp window free text is converted to the fallback template or held). An
    `Idempotency-Key` header makes a retried request send once."""
    pool = ingest.plat.pool
    lead = await pool.fetchrow(
        "SELECT l.phone_e164, l.email, l.wa_user_id, (SELECT m.channel FROM messages m"
        " WHERE m.lead_id = l.id AND m.direction = 'inbound' ORDER BY m.created_at DESC"
        " LIMIT 1) AS last_channel FROM leads l WHERE l.id = $1 AND l.company_id = $2",
        lead_id,
        company_id,
    )
    if lead is None:
        raise not_found("lead", lead_id)
    channel = (
        body.channel
        or lead["last_channel"]
        or ("email" if lead["email"] and not lead["phone_e164"] else "whatsapp_cloud")
    )
    to = lead["email"] if channel == "email" else (lead["phone_e164"] or lead["wa_user_id"])
    if not to:
        raise HTTPException(422, f"the lead has no address on {channel}")
    key = f"agent:{lead_id}:{idempotency_key}" if idempotency_key else f"agent:{uuid.uuid4()}"
    params = SendParams(
        company_id=company_id,
        lead_id=lead_id,
        channel=channel,
        to=to,
        text=body.text,
        template_id=body.template_id,
        template_params=body.template_params,
        send_key=key,
        purpose="agent",
    )
    async with ingest.plat.bus.unit() as unit:
        message_id, _ = await unit.request_send(params, priority=100)
        await unit.conn.execute(
            "UPDATE messages SET meta = meta || jsonb_build_object('by', $2::text) WHERE id = $1",
            message_id,
            caller.actor,
        )
        status = await unit.conn.fetchval("SELECT status FROM messages WHERE id = $1", message_id)
    return SendOut(message_id=message_id, status=status, channel=channel)


async def _handoff(
    ingest: Any, company_id: uuid.UUID, lead_id: uuid.UUID, by: str | None
) -> HandoffOut:
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE leads SET handoff_at = CASE WHEN $3::text IS NULL THEN NULL"
            " ELSE coalesce(handoff_at, now()) END, handoff_by = $3, updated_at = now()"
            " WHERE id = $1 AND company_id = $2 RETURNING handoff_at, handoff_by",
            lead_id,
            company_id,
            by,
        )
        if row is None:
            raise not_found("lead", lead_id)
        kind = EventType.LEAD_HANDOFF_STARTED if by else EventType.LEAD_HANDOFF_ENDED
        await record_event(conn, company_id, lead_id, kind, {"by": by})
    return HandoffOut(lead_id=lead_id, handoff_at=row["handoff_at"], handoff_by=row["handoff_by"])


@router.post("/leads/{lead_id}/handoff", response_model=HandoffOut)
async def take_over(
    lead_id: LeadId, company_id: AgentCompany, ingest: IngestDep, caller: PrincipalDep
) -> HandoffOut:
    """An agent takes the conversation over: the AI does not answer this lead until released."""
    return await _handoff(ingest, company_id, lead_id, caller.actor)


@router.delete("/leads/{lead_id}/handoff", response_model=HandoffOut)
async def hand_back(lead_id: LeadId, company_id: AgentCompany, ingest: IngestDep) -> HandoffOut:
    """Hand the conversation back to the AI."""
    return await _handoff(ingest, company_id, lead_id, None)


class SummaryRequested(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"job_id": ex.JOB_ID, "lead_id": ex.LEAD_ID, "status": "queued", "created": True}
        )
    )

    job_id: uuid.UUID
    lead_id: uuid.UUID
    status: str
    created: bool


@router.post("/leads/{lead_id}/summary", status_code=202, response_model=SummaryRequested)
async def request_summary(
    lead_id: LeadId,
    company_id: AgentCompany,
    ingest: IngestDep,
    idempotency_key: IdempotencyKey = None,
) -> SummaryRequested:
    """Enqueue ai.summary for the lead; the result lands in the lead's `summary`."""
    if not await ingest.plat.pool.fetchval(
        "SELECT 1 FROM leads WHERE id = $1 AND company_id = $2", lead_id, company_id
    ):
        raise not_found("lead", lead_id)
    key = f"summary-api:{lead_id}:{idempotency_key}" if idempotency_key else None
    job = await ingest.plat.bus.enqueue_job(
        "ai.summary",
        SummaryParams(lead_id=lead_id, reason="api"),
        key,
        company_id=company_id,
        lead_id=lead_id,
    )
    return SummaryRequested(job_id=job.id, lead_id=lead_id, status=job.status, created=job.created)


def response_204() -> Response:
    return Response(status_code=204)
