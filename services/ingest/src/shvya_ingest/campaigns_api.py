"""The email campaign admin API: define a campaign, preview it for a lead, send, pause, resume
or cancel it, and read its counts.

    POST   /v1/campaigns                          create (a draft)
    GET    /v1/campaigns                          list
    GET    /v1/campaigns/{campaign_id}            read, with counts
    PATCH  /v1/campaigns/{campaign_id}            edit (draft, paused)
    DELETE /v1/campaigns/{campaign_id}            delete a draft
    POST   /v1/campaigns/{campaign_id}/preview    render for a lead
    POST   /v1/campaigns/{campaign_id}/send       start (now or `at`)
    POST   /v1/campaigns/{campaign_id}/pause
    POST   /v1/campaigns/{campaign_id}/resume
    POST   /v1/campaigns/{campaign_id}/cancel
    GET    /v1/campaigns/{campaign_id}/counts     the counts alone
    GET    /v1/campaigns/{campaign_id}/recipients who, and how it went

Sending only enqueues the campaign's first `email.sequence` run; the scheduler does the rest
in bounded batches (see shvya_scheduler.campaigns). A template that does not parse is refused
at create and edit (422); one that names a field a lead lacks is refused by the preview for
that lead (422, naming the part and the field).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shvya_common.campaigns import (
    Audience,
    CampaignTemplate,
    SendWindow,
    render_campaign,
    start_runs,
)
from shvya_common.contracts.events import EventType
from shvya_common.events import record_event
from shvya_common.render import RenderError
from shvya_ingest import examples as ex
from shvya_ingest.api import IngestDep
from shvya_ingest.auth import AdminCompany, AgentCompany
from shvya_ingest.campaign_repository import CampaignRepository
from shvya_ingest.v1.common import ERRORS, V1, CampaignId, Offset, page_limit

Status = Literal["draft", "sending", "paused", "completed", "cancelled"]

router = APIRouter(
    prefix="/v1/campaigns",
    dependencies=V1,
    responses=ERRORS,
    tags=["campaigns"],
)


# What a campaign is made of, as a client sends it and as it is read back.
CAMPAIGN = {
    "template": {
        "subject": "{{ lead.first_name }}, 10% off solar this spring",
        "text": "Hi {{ lead.first_name }}, book an installation before June and save 10%.",
        "html": "<p>Hi {{ lead.first_name }}, book an installation before June and save 10%.</p>",
    },
    "audience": {
        "stages": ["Qualified"],
        "attributes": {"newsletter": True},
        "lead_ids": [],
        "created_after": None,
        "created_before": None,
        "active_within_days": 90,
    },
    "window": {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"},
    "rate_per_minute": 60,
}


class CampaignIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra=ex.examples({"name": "Spring offer", **CAMPAIGN}),
    )

    name: str = Field(min_length=1, max_length=200, examples=["Spring offer"])
    template: CampaignTemplate
    audience: Audience = Field(default_factory=Audience)
    window: SendWindow | None = Field(
        None, description="Days and hours in each lead's time zone; omit for any time."
    )
    rate_per_minute: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="This campaign's own cap; the company's rate (for all its campaigns) holds"
        " too.",
    )


class CampaignPatch(BaseModel):
    """Any of the fields of a campaign; `window: null` removes the window."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra=ex.examples({"rate_per_minute": 120}, {"window": None}),
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    template: CampaignTemplate | None = None
    audience: Audience | None = None
    window: SendWindow | None = None
    rate_per_minute: int | None = Field(None, ge=1, le=1_000_000)


class CampaignCounts(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "recipients": 1200,
                "pending": 0,
                "queued": 15,
                "sent": 1150,
                "deferred": 5,
                "suppressed": 12,
                "bounced": 9,
                "failed": 2,
                "unknown": 7,
                "opened": 610,
                "machine_opened": 140,
                "clicked": 95,
                "machine_clicked": 20,
                "unsubscribed": 4,
            }
        )
    )

    """Recipients by where their email is (`queued` … `unknown` are disjoint), and what the
    recipients did. Opens and clicks by mail proxies and scanners are counted apart."""

    recipients: int
    pending: int = Field(description="Not requested yet (waiting for the window or the rate).")
    queued: int
    sent: int
    deferred: int = Field(description="Held back by a send-time policy (e.g. quiet hours).")
    suppressed: int
    bounced: int
    failed: int
    unknown: int = Field(description="May have left; never retried (see docs/email.md).")
    opened: int
    machine_opened: int
    clicked: int
    machine_clicked: int
    unsubscribed: int


class CampaignOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.CAMPAIGN_ID,
                "company_id": ex.COMPANY_ID,
                "name": "Spring offer",
                "status": "sending",
                **CAMPAIGN,
                "audience_size": None,
                "counts": ex.example_of(CampaignCounts),
                "runs": 1,
                "created_at": ex.CREATED,
                "updated_at": ex.UPDATED,
                "started_at": ex.UPDATED,
                "paused_at": None,
                "completed_at": None,
            }
        )
    )

    id: uuid.UUID
    company_id: uuid.UUID
    name: str
    status: Status
    template: CampaignTemplate
    audience: Audience
    window: SendWindow | None
    rate_per_minute: int | None
    audience_size: int | None = Field(
        None, description="Leads the audience matches now (drafts only; then see counts)."
    )
    counts: CampaignCounts | None = None
    runs: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    paused_at: datetime | None
    completed_at: datetime | None


class CampaignList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"campaigns": [ex.example_of(CampaignOut)], "total": 1, "limit": 50, "offset": 0}
        )
    )

    campaigns: list[CampaignOut]
    total: int
    limit: int
    offset: int


class PreviewIn(BaseModel):
    """The lead to render for, by id or by email address."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra=ex.examples({"lead_id": ex.LEAD_ID}, {"email": ex.EMAIL}),
    )

    lead_id: uuid.UUID | None = None
    email: str | None = Field(None, max_length=254, examples=["riya@example.org"])
    template: CampaignTemplate | None = Field(
        None, description="Try an edit without saving it; the campaign's template otherwise."
    )

    @model_validator(mode="after")
    def _one_lead(self) -> PreviewIn:
        if (self.lead_id is None) == (self.email is None):
            raise ValueError("give exactly one of 'lead_id' and 'email'")
        return self


class PreviewOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "lead_id": ex.LEAD_ID,
                "to": ex.EMAIL,
                "subject": "Ana, 10% off solar this spring",
                "text": "Hi Ana, book an installation before June and save 10%.",
                "html": "<p>Hi Ana, book an installation before June and save 10%.</p>",
            }
        )
    )

    lead_id: uuid.UUID
    to: str | None
    subject: str
    text: str
    html: str | None


class SendIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ex.examples({}, {"at": ex.LATER}))

    at: datetime | None = Field(None, description="Start later (an aware time); now if omitted.")


class StateOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"id": ex.CAMPAIGN_ID, "status": "sending", "run": 1, "starts_at": ex.LATER}
        )
    )

    id: uuid.UUID
    status: Status
    run: int | None = None
    starts_at: datetime | None = None


class RecipientOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "lead_id": ex.LEAD_ID,
                "email": ex.EMAIL,
                "timezone": "America/Los_Angeles",
                "status": "requested",
                "reason": None,
                "message_id": ex.MESSAGE_ID,
                "send_status": "sent",
                "requested_at": ex.UPDATED,
            }
        )
    )

    lead_id: uuid.UUID
    email: str
    timezone: str
    status: Literal["pending", "requested", "skipped", "failed"]
    reason: str | None
    message_id: uuid.UUID | None
    send_status: str | None
    requested_at: datetime | None


def _repo(ingest: IngestDep) -> CampaignRepository:
    return CampaignRepository(ingest.plat.pool)


RepoDep = Annotated[CampaignRepository, Depends(_repo)]


def _template(row: Any) -> CampaignTemplate:
    return CampaignTemplate(subject=row["subject"], text=row["text_body"], html=row["html_body"])


async def _out(repo: CampaignRepository, row: Any, *, detail: bool = True) -> CampaignOut:
    """The campaign; with `detail`, its counts (or, for a draft, its audience's size)."""
    audience = Audience.model_validate(row["audience"] or {})
    draft = row["status"] == "draft"
    return CampaignOut(
        id=row["id"],
        company_id=row["company_id"],
        name=row["name"],
        status=row["status"],
        template=_template(row),
        audience=audience,
        window=SendWindow.model_validate(row["send_window"]) if row["send_window"] else None,
        rate_per_minute=row["rate_per_minute"],
        audience_size=(
            await repo.audience_size(row["company_id"], audience) if detail and draft else None
        ),
        counts=(CampaignCounts(**await repo.counts(row["id"])) if detail and not draft else None),
        runs=row["run_seq"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        paused_at=row["paused_at"],
        completed_at=row["completed_at"],
    )


def _checked(template: CampaignTemplate) -> CampaignTemplate:
    try:
        template.check_syntax()
    except RenderError as err:
        raise HTTPException(422, f"template {err}") from err
    return template


async def _require_company(repo: CampaignRepository, company_id: uuid.UUID) -> None:
    if not await repo.company_exists(company_id):
        raise HTTPException(404, f"company_id {company_id} does not exist")


async def _campaign(repo: CampaignRepository, company_id: uuid.UUID, campaign_id: uuid.UUID) -> Any:
    row = await repo.get(company_id, campaign_id)
    if row is None:
        raise HTTPException(404, f"campaign {campaign_id} does not exist in company {company_id}")
    return row


def _conflict(row: Any, action: str, allowed: str) -> HTTPException:
    return HTTPException(
        409, f"cannot {action} a campaign that is {row['status']} (only {allowed})"
    )


@router.post("", status_code=201, response_model=CampaignOut)
async def create_campaign(company_id: AdminCompany, body: CampaignIn, repo: RepoDep) -> CampaignOut:
    """Create a draft campaign; nothing is sent until `/send`."""
    await _require_company(repo, company_id)
    template = _checked(body.template)
    row = await repo.create(
        company_id,
        {
            "name": body.name,
            "subject": template.subject,
            "text_body": template.text,
            "html_body": template.html,
            "audience": body.audience.model_dump(mode="json", exclude_defaults=True),
            "send_window": body.window.model_dump(mode="json") if body.window else None,
            "rate_per_minute": body.rate_per_minute,
        },
    )
    return await _out(repo, row)


@router.get("", response_model=CampaignList)
async def list_campaigns(
    company_id: AgentCompany,
    repo: RepoDep,
    status: Annotated[Status | None, Query(description="Only campaigns in this state.")] = None,
    limit: Annotated[int, page_limit(200)] = 50,
    offset: Offset = 0,
) -> CampaignList:
    """The company's campaigns, newest first, without counts (read one campaign for those)."""
    await _require_company(repo, company_id)
    rows, total = await repo.list_campaigns(company_id, status, limit, offset)
    return CampaignList(
        campaigns=[await _out(repo, r, detail=False) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{campaign_id}", response_model=CampaignOut)
async def get_campaign(
    company_id: AgentCompany, campaign_id: CampaignId, repo: RepoDep
) -> CampaignOut:
    return await _out(repo, await _campaign(repo, company_id, campaign_id))


@router.patch("/{campaign_id}", response_model=CampaignOut)
async def update_campaign(
    company_id: AdminCompany, campaign_id: CampaignId, body: CampaignPatch, repo: RepoDep
) -> CampaignOut:
    """Edit a draft, or a paused campaign (its recipients stay; the audience is read again
    only by a schedule's refresh)."""
    row = await _campaign(repo, company_id, campaign_id)
    values: dict[str, Any] = {}
    given = body.model_fields_set
    if body.name is not None:
        values["name"] = body.name
    if body.template is not None:
        template = _checked(body.template)
        values.update(subject=template.subject, text_body=template.text, html_body=template.html)
    if body.audience is not None:
        values["audience"] = body.audience.model_dump(mode="json", exclude_defaults=True)
    if "window" in given:
        values["send_window"] = body.window.model_dump(mode="json") if body.window else None
    if "rate_per_minute" in given:
        values["rate_per_minute"] = body.rate_per_minute
    if not values:
        return await _out(repo, row)
    updated = await repo.update(company_id, campaign_id, values)
    if updated is None:
        raise _conflict(row, "edit", "draft or paused")
    return await _out(repo, updated)


@router.delete("/{campaign_id}", status_code=204)
async def delete_campaign(
    company_id: AdminCompany, campaign_id: CampaignId, repo: RepoDep
) -> Response:
    """Delete a draft (a campaign that has sent is kept, with its counts: cancel it instead)."""
    row = await _campaign(repo, company_id, campaign_id)
    if not await repo.delete_draft(company_id, campaign_id):
        raise _conflict(row, "delete", "draft; cancel it instead")
    return Response(status_code=204)


@router.post("/{campaign_id}/preview", response_model=PreviewOut)
async def preview_campaign(
    company_id: AdminCompany, campaign_id: CampaignId, body: PreviewIn, repo: RepoDep
) -> PreviewOut:
    """Render the template for one lead, as that lead would get it (before the unsubscribe
    footer, tracked links and open pixel the email channel adds)."""
    row = await _campaign(repo, company_id, campaign_id)
    lead = await repo.lead(company_id, body.lead_id, body.email)
    if lead is None:
        who = body.lead_id or body.email
        raise HTTPException(404, f"lead {who} does not exist in company {company_id}")
    template = _checked(body.template) if body.template is not None else _template(row)
    company = {"name": lead["company_name"], "timezone": lead["company_timezone"]}
    try:
        email = render_campaign(template, dict(lead), company)
    except RenderError as err:
        raise HTTPException(422, f"template cannot be rendered for this lead: {err}") from err
    return PreviewOut(
        lead_id=lead["id"],
        to=lead["email"],
        subject=email.subject,
        text=email.text,
        html=email.html,
    )


@router.post("/{campaign_id}/send", status_code=202, response_model=StateOut)
async def send_campaign(
    company_id: AdminCompany,
    campaign_id: CampaignId,
    ingest: IngestDep,
    repo: RepoDep,
    body: SendIn | None = None,
) -> StateOut:
    """Start sending a draft: the first run is enqueued now (or at `at`)."""
    at = body.at if body is not None else None
    if at is not None and at.tzinfo is None:
        raise HTTPException(422, "`at` needs a time zone (e.g. 2026-05-04T09:00:00+02:00)")
    row = await _campaign(repo, company_id, campaign_id)
    if row["status"] != "draft":
        raise _conflict(row, "send", "draft; resume a paused one")
    audience = Audience.model_validate(row["audience"] or {})
    if await repo.audience_size(company_id, audience) == 0:
        raise HTTPException(409, "no lead with an email address matches the audience")
    async with ingest.plat.bus.unit() as unit:
        run = await start_runs(unit, campaign_id, ["draft"], at=at)
        if run is None:
            raise HTTPException(409, "the campaign is no longer a draft")
        await record_event(
            unit.conn,
            company_id,
            None,
            EventType.CAMPAIGN_STARTED,
            {"campaign_id": str(campaign_id), "by": "api"},
        )
    return StateOut(id=campaign_id, status="sending", run=run, starts_at=at)


async def _move(
    ingest: IngestDep,
    repo: CampaignRepository,
    company_id: uuid.UUID,
    campaign_id: uuid.UUID,
    to: Status,
    allowed: list[str],
    event: EventType,
    action: str,
) -> StateOut:
    row = await _campaign(repo, company_id, campaign_id)
    async with ingest.plat.bus.unit() as unit:
        if to == "sending":
            run = await start_runs(unit, campaign_id, allowed)
            moved = run is not None
        else:
            run = None
            moved = await repo.move(unit.conn, company_id, campaign_id, to, allowed)
        if not moved:
            fresh = await repo.get(company_id, campaign_id, unit.conn) or row
            raise _conflict(fresh, action, " or ".join(allowed))
        await record_event(unit.conn, company_id, None, event, {"campaign_id": str(campaign_id)})
    return StateOut(id=campaign_id, status=to, run=run)


@router.post("/{campaign_id}/pause", response_model=StateOut)
async def pause_campaign(
    company_id: AdminCompany, campaign_id: CampaignId, ingest: IngestDep, repo: RepoDep
) -> StateOut:
    """Stop taking new batches; sends already handed to dispatch (at most one batch) still go."""
    return await _move(
        ingest,
        repo,
        company_id,
        campaign_id,
        "paused",
        ["sending"],
        EventType.CAMPAIGN_PAUSED,
        "pause",
    )


@router.post("/{campaign_id}/resume", response_model=StateOut)
async def resume_campaign(
    company_id: AdminCompany, campaign_id: CampaignId, ingest: IngestDep, repo: RepoDep
) -> StateOut:
    """Go on where the campaign stopped: a new chain of runs; the paused one's runs do nothing."""
    return await _move(
        ingest,
        repo,
        company_id,
        campaign_id,
        "sending",
        ["paused"],
        EventType.CAMPAIGN_RESUMED,
        "resume",
    )


@router.post("/{campaign_id}/cancel", response_model=StateOut)
async def cancel_campaign(
    company_id: AdminCompany, campaign_id: CampaignId, ingest: IngestDep, repo: RepoDep
) -> StateOut:
    """End the campaign for good; recipients not yet requested are never mailed."""
    return await _move(
        ingest,
        repo,
        company_id,
        campaign_id,
        "cancelled",
        ["draft", "sending", "paused"],
        EventType.CAMPAIGN_CANCELLED,
        "cancel",
    )


@router.get("/{campaign_id}/counts", response_model=CampaignCounts)
async def campaign_counts(
    company_id: AgentCompany, campaign_id: CampaignId, repo: RepoDep
) -> CampaignCounts:
    await _campaign(repo, company_id, campaign_id)
    return CampaignCounts(**await repo.counts(campaign_id))


@router.get(
    "/{campaign_id}/recipients",
    response_model=list[RecipientOut],
    responses=ex.listed(RecipientOut),
)
async def campaign_recipients(
    company_id: AgentCompany,
    campaign_id: CampaignId,
    repo: RepoDep,
    status: Annotated[
        Literal["pending", "requested", "skipped", "failed"] | None,
        Query(
            description="Only recipients in this state: `pending` (not requested yet),"
            " `requested` (its send asked of dispatch), `skipped` or `failed`."
        ),
    ] = None,
    limit: Annotated[int, page_limit(1000)] = 100,
    offset: Offset = 0,
) -> list[RecipientOut]:
    await _campaign(repo, company_id, campaign_id)
    rows = await repo.recipients(campaign_id, status, limit, offset)
    return [RecipientOut(**dict(r)) for r in rows]
