"""The admin API of outbound webhooks and reminders.

    GET    /v1/webhooks/event-types               what may be subscribed
    POST   /v1/webhooks/endpoints                 register (secret once)
    GET    /v1/webhooks/endpoints                 list
    GET    /v1/webhooks/endpoints/{id}            read
    PATCH  /v1/webhooks/endpoints/{id}            edit, enable, disable
    DELETE /v1/webhooks/endpoints/{id}            delete
    POST   /v1/webhooks/endpoints/{id}/rotate-secret
    GET    /v1/webhooks/endpoints/{id}/deliveries the delivery log
    GET    /v1/webhooks/deliveries/{id}           one, with its attempts
    POST   /v1/webhooks/deliveries/{id}/redeliver send it again
    POST   /v1/reminders                          schedule a reminder
    GET    /v1/reminders                          list
    GET    /v1/reminders/{id}                     read
    PATCH  /v1/reminders/{id}                     reschedule or edit
    DELETE /v1/reminders/{id}                     cancel

A URL must be http or https without credentials; unless WEBHOOK_ALLOW_PRIVATE_NETWORKS is set,
an IP literal must be public and `localhost` names are refused here already (the guard that
matters runs in dispatch, on the address each attempt connects to). Signing secrets are stored
encrypted (SECRETS_KEYS) and returned only by the request that creates or rotates them. Ids of
another company answer 404, like ids that do not exist.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from shvya_common.bus import NewJob
from shvya_common.contracts import WebhookParams
from shvya_common.contracts.events import PUBLIC_EVENTS
from shvya_common.crypto import SecretBox
from shvya_common.webhooks.keys import check_secret, new_secret
from shvya_common.webhooks.netguard import literal_address, refusal
from shvya_common.webhooks.repository import (
    Conflict,
    NotFound,
    ReminderRepository,
    WebhookRepository,
)
from shvya_ingest import examples as ex
from shvya_ingest.api import Ingest, IngestDep
from shvya_ingest.auth import AdminCompany, AgentCompany
from shvya_ingest.v1.common import (
    ERRORS,
    V1,
    DeliveryId,
    EndpointId,
    LeadFilter,
    ReminderId,
    page_limit,
)

TASK = "webhook.reminder"
MAX_OVERLAP_SECONDS = 7 * 24 * 3600
EXAMPLE_URL = "https://crm.example.com/hooks/shvya"

router = APIRouter(
    prefix="/v1",
    dependencies=V1,
    responses=ERRORS,
    tags=["outbound webhooks and reminders"],
)


def _check_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as err:
        raise ValueError(f"not a valid URL: {err}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("the URL must start with http:// or https:// and name a host")
    if url.userinfo:
        raise ValueError("the URL must not carry a user name or password")
    return str(url)


def _check_types(value: list[str]) -> list[str]:
    allowed = {t.value for t in PUBLIC_EVENTS}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(
            f"unknown event types {', '.join(unknown)}; choose from {', '.join(sorted(allowed))}"
        )
    return sorted(set(value))


class EndpointIn(BaseModel):
    """A URL that receives the company's events of the given types."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "url": EXAMPLE_URL,
                    "event_types": ["message.received", "lead.created", "reminder.due"],
                    "description": "CRM sync",
                }
            ]
        },
    )

    url: str = Field(min_length=8, max_length=2000, examples=[EXAMPLE_URL])
    event_types: list[str] = Field(min_length=1, max_length=100)
    description: str | None = Field(None, max_length=500)
    secret: str | None = Field(
        None, description="Your own whsec_ secret; by default one is generated and returned."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return _check_types(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        return check_secret(value) if value is not None else None


class EndpointPatch(BaseModel):
    """What to change; `enabled: true` re-enables a disabled or failing endpoint."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"enabled": True}, {"event_types": ["lead.created"]}]},
    )

    url: str | None = Field(None, min_length=8, max_length=2000)
    event_types: list[str] | None = Field(None, min_length=1, max_length=100)
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _check_url(value) if value is not None else None

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        return _check_types(value) if value is not None else None


class EndpointOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.ENDPOINT_ID,
                "company_id": ex.COMPANY_ID,
                "url": "https://hooks.acme.example/shvya",
                "description": "CRM sync",
                "event_types": ["lead.created", "lead.stage_changed", "message.received"],
                "status": "active",
                "disabled_reason": None,
                "consecutive_failures": 0,
                "rotating_until": None,
                "last_success_at": ex.UPDATED,
                "last_failure_at": None,
                "created_at": ex.CREATED,
                "updated_at": ex.UPDATED,
            }
        )
    )

    id: uuid.UUID
    company_id: uuid.UUID
    url: str
    description: str | None
    event_types: list[str]
    status: Literal["active", "failing", "disabled"]
    disabled_reason: str | None
    consecutive_failures: int
    rotating_until: datetime | None = Field(
        description="While set, deliveries carry a signature with the previous secret too."
    )
    last_success_at: datetime | None
    last_failure_at: datetime | None
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    model_config = ConfigDict(
        json_schema_extra=ex.examples({**ex.example_of(EndpointOut), "secret": ex.WEBHOOK_SECRET})
    )

    secret: str = Field(description="The signing secret; shown only in this answer.")


class EndpointList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples({"endpoints": [ex.example_of(EndpointOut)]})
    )

    endpoints: list[EndpointOut]


class RotateIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"overlap_seconds": 86400}]}
    )

    overlap_seconds: int = Field(
        86400,
        ge=0,
        le=MAX_OVERLAP_SECONDS,
        description="How long the old secret keeps signing too (two signatures per delivery).",
    )
    secret: str | None = Field(None, description="Your own new whsec_ secret; else generated.")

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        return check_secret(value) if value is not None else None


class EventTypes(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "event_types": [
                    "lead.created",
                    "lead.stage_changed",
                    "message.received",
                    "message.sent",
                ]
            }
        )
    )

    event_types: list[str]


class AttemptOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "attempt": 1,
                "outcome": "succeeded",
                "status_code": 200,
                "latency_ms": 84.2,
                "error": None,
                "address": "203.0.113.10",
                "response": "ok",
                "created_at": ex.CREATED,
            }
        )
    )

    attempt: int
    outcome: Literal["succeeded", "failed"]
    status_code: int | None
    latency_ms: float | None
    error: str | None
    address: str | None = Field(description="The IP address connected to.")
    response: str | None = Field(description="The start of the response body.")
    created_at: datetime


class DeliveryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.DELIVERY_ID,
                "endpoint_id": ex.ENDPOINT_ID,
                "event_id": ex.EVENT_ID,
                "event_type": "lead.stage_changed",
                "status": "succeeded",
                "attempts": 1,
                "redeliveries": 0,
                "last_status_code": 200,
                "last_latency_ms": 84.2,
                "last_error": None,
                "last_attempt_at": ex.CREATED,
                "next_attempt_at": None,
                "succeeded_at": ex.CREATED,
                "created_at": ex.CREATED,
                "updated_at": ex.CREATED,
            }
        )
    )

    id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID = Field(description="Also the webhook-id header of every attempt.")
    event_type: str
    status: Literal["pending", "succeeded", "failed", "skipped"]
    attempts: int
    redeliveries: int
    last_status_code: int | None
    last_latency_ms: float | None
    last_error: str | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    succeeded_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DeliveryDetail(DeliveryOut):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {**ex.example_of(DeliveryOut), "attempt_log": [ex.example_of(AttemptOut)]}
        )
    )

    attempt_log: list[AttemptOut]


class DeliveryList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"deliveries": [ex.example_of(DeliveryOut)], "next_before": None}
        )
    )

    deliveries: list[DeliveryOut]
    next_before: uuid.UUID | None = Field(
        description="Pass as `before` for the next (older) page; null on the last."
    )


class Redelivery(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "delivery_id": ex.DELIVERY_ID,
                "job_id": ex.JOB_ID,
                "redelivery": 1,
                "status": "pending",
            }
        )
    )

    delivery_id: uuid.UUID
    job_id: uuid.UUID
    redelivery: int
    status: Literal["pending"] = "pending"


class ReminderIn(BaseModel):
    """A reminder: at `remind_at` a `reminder.due` event goes to the subscribed endpoints."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "remind_at": "2026-05-04T09:45:00+02:00",
                    "title": "Call Asha about the annual plan",
                    "lead_id": "6f1c1d0e-8d1e-4a63-9a49-5a4c2b7e9f10",
                    "data": {"call_at": "2026-05-04T10:00:00+02:00", "rep": "maria@example.com"},
                }
            ]
        },
    )

    remind_at: AwareDatetime = Field(description="With a UTC offset; a past time fires now.")
    title: str = Field(min_length=1, max_length=300)
    note: str | None = Field(None, max_length=5000)
    lead_id: uuid.UUID | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="Passed on in the event.")


class ReminderPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"remind_at": "2026-05-04T13:45:00+02:00"}]},
    )

    remind_at: AwareDatetime | None = None
    title: str | None = Field(None, min_length=1, max_length=300)
    note: str | None = Field(None, max_length=5000)
    data: dict[str, Any] | None = None


class ReminderOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.REMINDER_ID,
                "company_id": ex.COMPANY_ID,
                "lead_id": ex.LEAD_ID,
                "remind_at": "2026-05-06T13:45:00Z",
                "title": "Call Ana about the quote",
                "note": "She prefers afternoons",
                "data": {"quote": "Q-2026-118"},
                "status": "scheduled",
                "version": 1,
                "fired_at": None,
                "created_at": ex.CREATED,
                "updated_at": ex.CREATED,
            }
        )
    )

    id: uuid.UUID
    company_id: uuid.UUID
    lead_id: uuid.UUID | None
    remind_at: datetime
    title: str
    note: str | None
    data: dict[str, Any]
    status: Literal["scheduled", "fired", "cancelled"]
    version: int
    fired_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ReminderList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples({"reminders": [ex.example_of(ReminderOut)]})
    )

    reminders: list[ReminderOut]


# --- helpers ---


async def _require_company(ingest: Ingest, company_id: uuid.UUID) -> None:
    if not await WebhookRepository.company_exists(ingest.plat.pool, company_id):
        raise HTTPException(404, f"company_id {company_id} does not exist")


def _box(ingest: Ingest) -> SecretBox:
    box = ingest.settings.secret_box()
    if box is None:
        raise HTTPException(
            409,
            "SECRETS_KEYS is not set, so signing secrets cannot be stored; add a keyring entry"
            " (`shvya keygen` prints one) to ingest's and dispatch's settings",
        )
    return box


def _reachable(ingest: Ingest, url: str) -> None:
    """Refuse what is plainly internal now, rather than failing every delivery later."""
    if ingest.settings.webhook_allow_private_networks:
        return
    host = httpx.URL(url).host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        raise HTTPException(422, f"{host} is this machine; webhooks only go to public addresses")
    literal = literal_address(host)
    why = refusal(literal) if literal is not None else None
    if why is not None:
        raise HTTPException(422, f"{literal} is {why}; webhooks only go to public addresses")


def _endpoint_404(company_id: uuid.UUID, endpoint_id: uuid.UUID) -> HTTPException:
    return HTTPException(404, f"endpoint {endpoint_id} does not exist in company {company_id}")


# --- endpoints ---


@router.get("/webhooks/event-types", response_model=EventTypes)
async def event_types(company_id: AgentCompany) -> EventTypes:
    """The event types an endpoint may subscribe to."""
    return EventTypes(event_types=sorted(t.value for t in PUBLIC_EVENTS))


@router.post("/webhooks/endpoints", status_code=201, response_model=EndpointWithSecret)
async def create_endpoint(
    company_id: AdminCompany, body: EndpointIn, ingest: IngestDep
) -> EndpointWithSecret:
    """Register an endpoint; the answer carries its signing secret, shown only this once."""
    await _require_company(ingest, company_id)
    _reachable(ingest, body.url)
    secret = body.secret or new_secret()
    row = await WebhookRepository.create_endpoint(
        ingest.plat.pool,
        company_id,
        url=body.url,
        description=body.description,
        event_types=body.event_types,
        secret=secret,
        box=_box(ingest),
    )
    return EndpointWithSecret(**row, secret=secret)


@router.get("/webhooks/endpoints", response_model=EndpointList)
async def list_endpoints(company_id: AgentCompany, ingest: IngestDep) -> EndpointList:
    await _require_company(ingest, company_id)
    rows = await WebhookRepository.list_endpoints(ingest.plat.pool, company_id)
    return EndpointList(endpoints=[EndpointOut(**r) for r in rows])


@router.get("/webhooks/endpoints/{endpoint_id}", response_model=EndpointOut)
async def get_endpoint(
    company_id: AgentCompany, endpoint_id: EndpointId, ingest: IngestDep
) -> EndpointOut:
    row = await WebhookRepository.get_endpoint(ingest.plat.pool, company_id, endpoint_id)
    if row is None:
        raise _endpoint_404(company_id, endpoint_id)
    return EndpointOut(**row)


@router.patch("/webhooks/endpoints/{endpoint_id}", response_model=EndpointOut)
async def update_endpoint(
    company_id: AdminCompany, endpoint_id: EndpointId, body: EndpointPatch, ingest: IngestDep
) -> EndpointOut:
    """Change the URL, the event types or the description; enable or disable it."""
    if body.url is not None:
        _reachable(ingest, body.url)
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await WebhookRepository.update_endpoint(
            conn,
            company_id,
            endpoint_id,
            url=body.url,
            description=body.description,
            event_types=body.event_types,
            enabled=body.enabled,
        )
    if row is None:
        raise _endpoint_404(company_id, endpoint_id)
    return EndpointOut(**row)


@router.delete("/webhooks/endpoints/{endpoint_id}", status_code=204)
async def delete_endpoint(
    company_id: AdminCompany, endpoint_id: EndpointId, ingest: IngestDep
) -> Response:
    """Delete the endpoint with its delivery log; pending deliveries stop."""
    if not await WebhookRepository.delete_endpoint(ingest.plat.pool, company_id, endpoint_id):
        raise _endpoint_404(company_id, endpoint_id)
    return Response(status_code=204)


@router.post("/webhooks/endpoints/{endpoint_id}/rotate-secret", response_model=EndpointWithSecret)
async def rotate_secret(
    company_id: AdminCompany, endpoint_id: EndpointId, body: RotateIn, ingest: IngestDep
) -> EndpointWithSecret:
    """Replace the signing secret; for `overlap_seconds` deliveries are signed with both."""
    box = _box(ingest)
    secret = body.secret or new_secret()
    async with ingest.plat.pool.acquire() as conn, conn.transaction():
        row = await WebhookRepository.rotate_secret(
            conn,
            company_id,
            endpoint_id,
            secret=secret,
            overlap=timedelta(seconds=body.overlap_seconds),
            box=box,
        )
    if row is None:
        raise _endpoint_404(company_id, endpoint_id)
    return EndpointWithSecret(**row, secret=secret)


# --- the delivery log ---


@router.get("/webhooks/endpoints/{endpoint_id}/deliveries", response_model=DeliveryList)
async def list_deliveries(
    company_id: AgentCompany,
    endpoint_id: EndpointId,
    ingest: IngestDep,
    status: Annotated[
        Literal["pending", "succeeded", "failed", "skipped"] | None,
        Query(description="Only deliveries in this state."),
    ] = None,
    before: Annotated[
        uuid.UUID | None, Query(description="Only deliveries older than this one (a page's last).")
    ] = None,
    limit: Annotated[int, page_limit(500)] = 50,
) -> DeliveryList:
    """The endpoint's deliveries, newest first, each with its last attempt's outcome."""
    pool = ingest.plat.pool
    if await WebhookRepository.get_endpoint(pool, company_id, endpoint_id) is None:
        raise _endpoint_404(company_id, endpoint_id)
    rows = await WebhookRepository.list_deliveries(
        pool, company_id, endpoint_id, status=status, limit=limit, before=before
    )
    more = rows[-1]["id"] if len(rows) == limit else None
    return DeliveryList(deliveries=[DeliveryOut(**r) for r in rows], next_before=more)


@router.get("/webhooks/deliveries/{delivery_id}", response_model=DeliveryDetail)
async def get_delivery(
    company_id: AgentCompany, delivery_id: DeliveryId, ingest: IngestDep
) -> DeliveryDetail:
    """One delivery with every attempt: outcome, status code, latency, error."""
    row = await WebhookRepository.get_delivery(ingest.plat.pool, company_id, delivery_id)
    if row is None:
        raise HTTPException(404, f"delivery {delivery_id} does not exist in company {company_id}")
    return DeliveryDetail(**row)


@router.post(
    "/webhooks/deliveries/{delivery_id}/redeliver", status_code=202, response_model=Redelivery
)
async def redeliver(
    company_id: AdminCompany, delivery_id: DeliveryId, ingest: IngestDep
) -> Redelivery:
    """Send the delivery again now, with a fresh run of attempts (its log keeps the old ones);
    a retry still waiting is replaced by this one."""
    async with ingest.plat.bus.unit() as unit:
        try:
            job_id, number, refs = await WebhookRepository.redeliver(
                unit.conn, company_id, delivery_id
            )
        except NotFound as err:
            raise HTTPException(404, str(err)) from err
        except Conflict as err:
            raise HTTPException(409, str(err)) from err
        await unit.enqueue_jobs(
            [
                NewJob(
                    TASK,
                    WebhookParams(kind="delivery", delivery_id=delivery_id).model_dump(mode="json"),
                    idempotency_key=f"webhook:{delivery_id}:{number}",
                    company_id=company_id,
                    lead_id=refs["lead_id"],
                    id=job_id,
                )
            ]
        )
    return Redelivery(delivery_id=delivery_id, job_id=job_id, redelivery=number)


# --- reminders ---


def _reminder_404(company_id: uuid.UUID, reminder_id: uuid.UUID) -> HTTPException:
    return HTTPException(404, f"reminder {reminder_id} does not exist in company {company_id}")


def _reminder_job(row: dict[str, Any]) -> tuple[WebhookParams, str]:
    params = WebhookParams(kind="reminder", reminder_id=row["id"], version=row["version"])
    return params, f"reminder:{row['id']}:{row['version']}"


@router.post("/reminders", status_code=201, response_model=ReminderOut)
async def create_reminder(
    company_id: AgentCompany, body: ReminderIn, ingest: IngestDep
) -> ReminderOut:
    """Schedule a reminder; at its time `reminder.due` is recorded and fanned out."""
    await _require_company(ingest, company_id)
    async with ingest.plat.bus.unit() as unit:
        if body.lead_id is not None and not await ReminderRepository.lead_in_company(
            unit.conn, company_id, body.lead_id
        ):
            raise HTTPException(404, f"lead {body.lead_id} does not exist in company {company_id}")
        row = await ReminderRepository.create_reminder(
            unit.conn,
            company_id,
            lead_id=body.lead_id,
            remind_at=body.remind_at.astimezone(UTC),
            title=body.title,
            note=body.note,
            data=body.data,
        )
        params, key = _reminder_job(row)
        await unit.enqueue_job(
            TASK, params, key, company_id=company_id, lead_id=body.lead_id, run_at=row["remind_at"]
        )
    return ReminderOut(**row)


@router.get("/reminders", response_model=ReminderList)
async def list_reminders(
    company_id: AgentCompany,
    ingest: IngestDep,
    status: Annotated[
        Literal["scheduled", "fired", "cancelled"] | None,
        Query(description="Only reminders in this state."),
    ] = None,
    lead_id: LeadFilter = None,
    limit: Annotated[
        int, Query(ge=1, le=500, description="How many, soonest first: 1 to 500.")
    ] = 100,
) -> ReminderList:
    """The company's reminders, soonest first."""
    await _require_company(ingest, company_id)
    rows = await ReminderRepository.list_reminders(
        ingest.plat.pool, company_id, status=status, lead_id=lead_id, limit=limit
    )
    return ReminderList(reminders=[ReminderOut(**r) for r in rows])


@router.get("/reminders/{reminder_id}", response_model=ReminderOut)
async def get_reminder(
    company_id: AgentCompany, reminder_id: ReminderId, ingest: IngestDep
) -> ReminderOut:
    row = await ReminderRepository.get_reminder(ingest.plat.pool, company_id, reminder_id)
    if row is None:
        raise _reminder_404(company_id, reminder_id)
    return ReminderOut(**row)


@router.patch("/reminders/{reminder_id}", response_model=ReminderOut)
async def update_reminder(
    company_id: AgentCompany, reminder_id: ReminderId, body: ReminderPatch, ingest: IngestDep
) -> ReminderOut:
    """Edit a scheduled reminder; a new `remind_at` reschedules it (the old time is void)."""
    async with ingest.plat.bus.unit() as unit:
        try:
            row = await ReminderRepository.update_reminder(
                unit.conn,
                company_id,
                reminder_id,
                remind_at=body.remind_at.astimezone(UTC) if body.remind_at else None,
                title=body.title,
                note=body.note,
                data=body.data,
            )
        except NotFound as err:
            raise HTTPException(404, str(err)) from err
        except Conflict as err:
            raise HTTPException(409, str(err)) from err
        if body.remind_at is not None:
            params, key = _reminder_job(row)
            await unit.enqueue_job(
                TASK,
                params,
                key,
                company_id=company_id,
                lead_id=row["lead_id"],
                run_at=row["remind_at"],
            )
    return ReminderOut(**row)


@router.delete("/reminders/{reminder_id}", status_code=204)
async def cancel_reminder(
    company_id: AgentCompany, reminder_id: ReminderId, ingest: IngestDep
) -> Response:
    """Cancel a scheduled reminder (a fired one answers 409)."""
    try:
        await ReminderRepository.cancel_reminder(ingest.plat.pool, company_id, reminder_id)
    except NotFound as err:
        raise HTTPException(404, str(err)) from err
    except Conflict as err:
        raise HTTPException(409, str(err)) from err
    return Response(status_code=204)
