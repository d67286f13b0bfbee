"""The sequences API (admin keys edit, agent keys read and enrol): a company's sequences and
their ordered steps, the leads enrolled in them, and the company's cross-channel opt-out
setting.

Under /v1:

    POST   /sequences                                 create, with its steps
    GET    /sequences                                 list
    GET    /sequences/{id}                            read, with its steps
    PATCH  /sequences/{id}                            name, channel, on_reply, quiet period
    PUT    /sequences/{id}/steps                      replace the ordered steps
    PATCH  /sequences/{id}/steps/{step_id}            change one step
    DELETE /sequences/{id}/steps/{step_id}            remove one step
    POST   /sequences/{id}/archive                    archive (its enrolments stop)
    POST   /sequences/{id}/preview                    the sends as one lead would get them
    POST   /sequences/{id}/enrolments                 enrol a lead, a list, or a filter's leads
    GET    /sequences/{id}/enrolments                 list enrolments
    GET    /sequences/{id}/enrolments/{eid}           one enrolment, with its history
    POST   /sequences/{id}/enrolments/{eid}/stop      stop one enrolment
    GET    /leads/{lead_id}/enrolments                a lead's enrolments
    GET    /optout-settings, PUT                      one opt-out across channels

Ids of another company answer 404; steps that cannot run (an unknown branch target, a loop
without a wait, another company's template, an unknown stage) answer 422 with the reason. Every
change runs in one unit of work of the job bus: the first step's jobs, the stops an archive
makes, and the rows they name commit together and are published after COMMIT.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

import asyncpg
import structlog
from fastapi import APIRouter, Body, HTTPException, Query, Response
from pydantic import ValidationError

from shvya_common.render import RenderError, lead_context, render_text
from shvya_common.sequences import definitions, enrolments, queries
from shvya_common.sequences.steps import (
    STEP,
    AnyStep,
    MoveStageStep,
    SendStep,
    StepsError,
    check_steps,
)
from shvya_ingest import examples as ex
from shvya_ingest.api import IngestDep
from shvya_ingest.auth import AdminCompany, AgentCompany
from shvya_ingest.phone import AddressError, normalise_email, normalise_phone
from shvya_ingest.sequence_models import (
    STEP_OUTPUT_ONLY,
    EditOut,
    EnrolIn,
    EnrolledLead,
    EnrolmentDetail,
    EnrolmentList,
    EnrolmentOut,
    EnrolOut,
    HistoryOut,
    MovedOut,
    OptOutSettings,
    PreviewIn,
    PreviewStep,
    SequenceIn,
    SequenceList,
    SequenceOut,
    SequencePatch,
    StepsIn,
)
from shvya_ingest.v1.common import (
    ERRORS,
    V1,
    EnrolmentId,
    LeadFilter,
    LeadId,
    Offset,
    SequenceId,
    StepId,
    page_limit,
)

log = structlog.get_logger(__name__)

router = APIRouter(
    prefix="/v1",
    dependencies=V1,
    responses=ERRORS,
    tags=["sequences"],
)


async def _require_company(conn: asyncpg.Connection, company_id: uuid.UUID) -> None:
    if not await definitions.company_exists(conn, company_id):
        raise HTTPException(404, f"company {company_id} does not exist")


async def _sequence(
    conn: asyncpg.Connection,
    company_id: uuid.UUID,
    sequence_id: uuid.UUID,
    lock: Literal["share", "update"] | None = None,
) -> asyncpg.Record:
    row = await definitions.get(conn, company_id, sequence_id, lock=lock)
    if row is None:
        raise HTTPException(404, f"sequence {sequence_id} does not exist in company {company_id}")
    return row


def _not_archived(sequence: asyncpg.Record) -> None:
    if sequence["archived_at"] is not None:
        raise HTTPException(409, f"sequence {sequence['id']} is archived")


def _step_out(stored: definitions.StoredStep) -> dict[str, Any]:
    body = stored.step.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "id": str(stored.id),
        "position": stored.position,
        "version": stored.version,
        "updated_at": stored.updated_at.isoformat(),
        **{k: v for k, v in body.items() if k != "id"},
    }


async def _out(conn: asyncpg.Connection, row: asyncpg.Record) -> SequenceOut:
    steps = await definitions.live_steps(conn, row["id"])
    counts = await definitions.enrolment_counts(conn, [row["id"]])
    return SequenceOut(
        **{k: row[k] for k in SequenceOut.model_fields if k not in ("enrolments", "steps")},
        enrolments=counts.get(row["id"], {}),
        steps=[_step_out(s) for s in steps],
    )


async def _checked(
    conn: asyncpg.Connection, company_id: uuid.UUID, steps: list[AnyStep]
) -> list[AnyStep]:
    """The steps, keyed, or 422 with what cannot run."""
    try:
        keyed = check_steps(steps)
    except StepsError as err:
        raise HTTPException(422, str(err)) from err
    templates = [s.template_id for s in keyed if isinstance(s, SendStep) and s.template_id]
    missing = await definitions.missing_templates(conn, company_id, templates)
    if missing:
        raise HTTPException(422, f"template {missing[0]} is not a template of this company")
    stages = [s.stage for s in keyed if isinstance(s, MoveStageStep)]
    if stages:
        known = await definitions.stage_names(conn, company_id)
        unknown = [s for s in stages if s.casefold() not in known]
        if unknown:
            raise HTTPException(422, f"no stage named {unknown[0]!r} in the company's pipelines")
    return keyed


@router.post("/sequences", status_code=201, response_model=SequenceOut)
async def create_sequence(
    company_id: AdminCompany, body: SequenceIn, ingest: IngestDep
) -> SequenceOut:
    """Create a sequence with its steps; steps without a `key` get `step-<n>`."""
    async with ingest.plat.bus.unit() as unit:
        await _require_company(unit.conn, company_id)
        steps = await _checked(unit.conn, company_id, list(body.steps))
        fields = body.model_dump(exclude={"steps"})
        sequence_id = await definitions.create(unit.conn, company_id, fields, steps)
        out = await _out(unit.conn, await _sequence(unit.conn, company_id, sequence_id))
    log.info("sequence_created", company_id=str(company_id), sequence_id=str(sequence_id))
    return out


@router.get("/sequences", response_model=SequenceList)
async def list_sequences(
    company_id: AgentCompany,
    ingest: IngestDep,
    archived: Annotated[bool, Query(description="Include archived sequences.")] = False,
    limit: Annotated[int, page_limit(500)] = 100,
    offset: Offset = 0,
) -> SequenceList:
    async with ingest.plat.pool.acquire() as conn:
        await _require_company(conn, company_id)
        rows, total = await definitions.list_sequences(
            conn, company_id, archived=archived, limit=limit, offset=offset
        )
        return SequenceList(
            sequences=[await _out(conn, r) for r in rows], total=total, limit=limit, offset=offset
        )


@router.get("/sequences/{sequence_id}", response_model=SequenceOut)
async def get_sequence(
    company_id: AgentCompany, sequence_id: SequenceId, ingest: IngestDep
) -> SequenceOut:
    async with ingest.plat.pool.acquire() as conn:
        return await _out(conn, await _sequence(conn, company_id, sequence_id))


@router.patch("/sequences/{sequence_id}", response_model=SequenceOut)
async def update_sequence(
    company_id: AdminCompany, sequence_id: SequenceId, body: SequencePatch, ingest: IngestDep
) -> SequenceOut:
    """Change the sequence's own fields; enrolled leads go on with the new settings."""
    changes = body.model_dump(exclude_unset=True)
    required = ("name", "channel", "on_reply", "resume_after_quiet_seconds")
    if any(changes[k] is None for k in required if k in changes):
        raise HTTPException(422, f"{', '.join(required)} cannot be null")
    async with ingest.plat.bus.unit() as unit:
        sequence = await _sequence(unit.conn, company_id, sequence_id, "update")
        _not_archived(sequence)
        await definitions.update(unit.conn, sequence_id, changes)
        return await _out(unit.conn, await _sequence(unit.conn, company_id, sequence_id))


async def _replace(
    ingest: IngestDep,
    company_id: uuid.UUID,
    sequence_id: uuid.UUID,
    edit: Callable[[list[definitions.StoredStep]], list[AnyStep]],
) -> EditOut:
    """Lock the sequence, build the new step list with `edit(stored steps)`, and store it."""
    async with ingest.plat.bus.unit() as unit:
        sequence = await _sequence(unit.conn, company_id, sequence_id, "update")
        _not_archived(sequence)
        stored = await definitions.live_steps(unit.conn, sequence_id)
        steps = await _checked(unit.conn, company_id, edit(stored))
        try:
            moved = await definitions.replace_steps(unit.conn, sequence_id, steps)
        except StepsError as err:
            raise HTTPException(422, str(err)) from err
        out = await _out(unit.conn, await _sequence(unit.conn, company_id, sequence_id))
    log.info("sequence_steps_replaced", sequence_id=str(sequence_id), moved=len(moved))
    return EditOut(
        sequence=out,
        moved=[
            MovedOut(enrolment_id=m.enrolment_id, from_step=m.from_key, to_step=m.to_key)
            for m in moved
        ],
    )


@router.put("/sequences/{sequence_id}/steps", response_model=EditOut)
async def replace_steps(
    company_id: AdminCompany, sequence_id: SequenceId, body: StepsIn, ingest: IngestDep
) -> EditOut:
    """Replace the ordered steps. Changed steps get a new version; leads on a removed step move
    to the next remaining one and keep their due time."""
    return await _replace(ingest, company_id, sequence_id, lambda _stored: list(body.steps))


@router.patch("/sequences/{sequence_id}/steps/{step_id}", response_model=EditOut)
async def update_step(
    company_id: AdminCompany,
    sequence_id: SequenceId,
    step_id: StepId,
    body: Annotated[
        dict[str, Any],
        Body(examples=[{"text": "Hi {{ lead.first_name }}, a new offer!"}, {"seconds": 3600}]),
    ],
    ingest: IngestDep,
) -> EditOut:
    """Change fields of one step (a different `kind` replaces it whole, keeping its key)."""

    def edit(stored: list[definitions.StoredStep]) -> list[AnyStep]:
        target = next((s for s in stored if s.id == step_id), None)
        if target is None:
            raise HTTPException(404, f"step {step_id} is not a step of sequence {sequence_id}")
        patch = {k: v for k, v in body.items() if k not in ("id", *STEP_OUTPUT_ONLY)}
        current = target.step.model_dump(mode="json", by_alias=True, exclude_none=True)
        if patch.get("kind", current["kind"]) != current["kind"]:
            merged = {"key": current["key"], **patch}
        else:
            merged = {**current, **patch}
        try:
            changed: AnyStep = STEP.validate_python({**merged, "id": str(step_id)})
        except ValidationError as err:
            raise HTTPException(422, _validation_reason(err)) from err
        return [changed if s.id == step_id else s.step for s in stored]

    return await _replace(ingest, company_id, sequence_id, edit)


@router.delete("/sequences/{sequence_id}/steps/{step_id}", response_model=EditOut)
async def delete_step(
    company_id: AdminCompany, sequence_id: SequenceId, step_id: StepId, ingest: IngestDep
) -> EditOut:
    """Remove one step; leads waiting on it move to the step after it."""

    def edit(stored: list[definitions.StoredStep]) -> list[AnyStep]:
        if all(s.id != step_id for s in stored):
            raise HTTPException(404, f"step {step_id} is not a step of sequence {sequence_id}")
        return [s.step for s in stored if s.id != step_id]

    return await _replace(ingest, company_id, sequence_id, edit)


def _validation_reason(err: ValidationError) -> str:
    first = err.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))


@router.post("/sequences/{sequence_id}/archive", response_model=SequenceOut)
async def archive_sequence(
    company_id: AdminCompany, sequence_id: SequenceId, ingest: IngestDep
) -> SequenceOut:
    """Archive: no new enrolments, and the active and paused ones stop (reason `archived`)."""
    async with ingest.plat.bus.unit() as unit:
        await _sequence(unit.conn, company_id, sequence_id, "update")
        live = await definitions.archive(unit.conn, sequence_id)
        stopped = await enrolments.stop(unit, live, "archived", {})
        out = await _out(unit.conn, await _sequence(unit.conn, company_id, sequence_id))
    log.info("sequence_archived", sequence_id=str(sequence_id), stopped=len(stopped))
    return out


@router.post(
    "/sequences/{sequence_id}/preview",
    response_model=list[PreviewStep],
    responses=ex.listed(PreviewStep),
)
async def preview(
    company_id: AdminCompany, sequence_id: SequenceId, body: PreviewIn, ingest: IngestDep
) -> list[PreviewStep]:
    """Each send step as this lead would get it, or why it would not render."""
    async with ingest.plat.pool.acquire() as conn:
        sequence = await _sequence(conn, company_id, sequence_id)
        lead = await conn.fetchrow(
            "SELECT l.id, l.contact_name, l.phone_e164, l.email, l.timezone, l.attributes,"
            " s.name AS stage, c.name AS company_name, c.timezone AS company_timezone"
            " FROM leads l JOIN companies c ON c.id = l.company_id"
            " LEFT JOIN stages s ON s.id = l.stage_id WHERE l.id = $1 AND l.company_id = $2",
            body.lead_id,
            company_id,
        )
        if lead is None:
            raise HTTPException(404, f"lead {body.lead_id} does not exist in company {company_id}")
        context = lead_context(
            dict(lead), {"name": lead["company_name"], "timezone": lead["company_timezone"]}
        )
        out = []
        for stored in await definitions.live_steps(conn, sequence_id):
            step = stored.step
            if not isinstance(step, SendStep):
                continue
            channel = step.channel or sequence["channel"]
            to = lead["email"] if channel == "email" else lead["phone_e164"]
            if channel == "log":
                to = lead["phone_e164"] or lead["email"]
            text, params, error = None, [], None
            try:
                text = render_text(step.text, context) if step.text else None
                params = [render_text(p, context) for p in step.template_params]
            except RenderError as err:
                error = str(err)
            if to is None and error is None:
                error = f"the lead has no address for {channel}"
            out.append(
                PreviewStep(
                    key=stored.key,
                    channel=channel,
                    to=to,
                    text=text,
                    template_params=params,
                    error=error,
                )
            )
        return out


@router.post(
    "/sequences/{sequence_id}/enrolments",
    response_model=EnrolOut,
    responses={201: {"model": EnrolOut, "description": "At least one lead was enrolled."}},
)
async def enrol(
    company_id: AgentCompany,
    sequence_id: SequenceId,
    body: EnrolIn,
    ingest: IngestDep,
    response: Response,
) -> EnrolOut:
    """Enrol a lead, a list of leads, or the leads a filter selects (up to its `limit` per
    call; call again for the next ones). A lead already in the sequence, or with a
    suppression on one of its addresses, is not enrolled (and is counted)."""
    async with ingest.plat.bus.unit() as unit:
        sequence = await _sequence(unit.conn, company_id, sequence_id, "share")
        _not_archived(sequence)
        steps = await definitions.live_steps(unit.conn, sequence_id)
        if body.filter is not None:
            f = body.filter
            lead_ids = await queries.select_leads(
                unit.conn,
                company_id,
                sequence_id,
                phone=_phone(f.phone_number, ingest.settings.default_phone_region),
                email=_email(f.email),
                stage=f.stage,
                attributes=f.attributes,
                last_activity_before=f.last_activity_before,
                last_activity_after=f.last_activity_after,
                limit=f.limit,
            )
            source: enrolments.Source = "filter"
        else:
            lead_ids = [body.lead_id] if body.lead_id is not None else list(body.lead_ids or [])
            source = "lead" if body.lead_id is not None else "list"
            unknown = await queries.unknown_leads(unit.conn, company_id, lead_ids)
            if unknown:
                raise HTTPException(
                    404, f"lead {unknown[0]} does not exist in company {company_id}"
                )
        done = await enrolments.enrol(
            unit,
            company_id=company_id,
            sequence_id=sequence_id,
            first_step_id=steps[0].id,
            lead_ids=lead_ids,
            source=source,
            start_at=body.start_at,
        )
    if done.enrolled:
        response.status_code = 201
    log.info(
        "sequence_enrolled",
        sequence_id=str(sequence_id),
        enrolled=len(done.enrolled),
        already=len(done.already),
        suppressed=len(done.suppressed),
    )
    return EnrolOut(
        enrolled=len(done.enrolled),
        already_enrolled=len(done.already),
        suppressed=len(done.suppressed),
        enrolments=[EnrolledLead(enrolment_id=e, lead_id=lead) for e, lead in done.enrolled],
        already_enrolled_lead_ids=done.already,
        suppressed_lead_ids=done.suppressed,
    )


def _phone(raw: str | None, region: str | None) -> str | None:
    try:
        return None if raw is None else normalise_phone(raw, region)
    except AddressError as err:
        raise HTTPException(422, str(err)) from err


def _email(raw: str | None) -> str | None:
    try:
        return None if raw is None else normalise_email(raw)
    except AddressError as err:
        raise HTTPException(422, str(err)) from err


@router.get("/sequences/{sequence_id}/enrolments", response_model=EnrolmentList)
async def list_enrolments(
    company_id: AgentCompany,
    sequence_id: SequenceId,
    ingest: IngestDep,
    status: Annotated[
        Literal["active", "paused", "completed", "stopped"] | None,
        Query(description="Only enrolments in this state."),
    ] = None,
    lead_id: LeadFilter = None,
    limit: Annotated[int, page_limit(1000)] = 100,
    offset: Offset = 0,
) -> EnrolmentList:
    async with ingest.plat.pool.acquire() as conn:
        await _sequence(conn, company_id, sequence_id)
        rows, total = await queries.list_enrolments(
            conn, sequence_id, status=status, lead_id=lead_id, limit=limit, offset=offset
        )
        return EnrolmentList(
            enrolments=[EnrolmentOut.of(r) for r in rows], total=total, limit=limit, offset=offset
        )


async def _detail(conn: asyncpg.Connection, row: asyncpg.Record) -> EnrolmentDetail:
    history = await queries.enrolment_history(conn, row["id"])
    return EnrolmentDetail(
        **EnrolmentOut.of(row).model_dump(), history=[HistoryOut(**dict(h)) for h in history]
    )


@router.get("/sequences/{sequence_id}/enrolments/{enrolment_id}", response_model=EnrolmentDetail)
async def get_enrolment(
    company_id: AgentCompany, sequence_id: SequenceId, enrolment_id: EnrolmentId, ingest: IngestDep
) -> EnrolmentDetail:
    """Where the lead is (current step, next run, status) and everything that happened."""
    async with ingest.plat.pool.acquire() as conn:
        await _sequence(conn, company_id, sequence_id)
        row = await queries.get_enrolment(conn, sequence_id, enrolment_id)
        if row is None:
            raise HTTPException(404, f"enrolment {enrolment_id} is not in sequence {sequence_id}")
        return await _detail(conn, row)


@router.post(
    "/sequences/{sequence_id}/enrolments/{enrolment_id}/stop", response_model=EnrolmentDetail
)
async def stop_enrolment(
    company_id: AgentCompany, sequence_id: SequenceId, enrolment_id: EnrolmentId, ingest: IngestDep
) -> EnrolmentDetail:
    """Stop one enrolment now (reason `manual`); its unsent messages are cancelled."""
    async with ingest.plat.bus.unit() as unit:
        await _sequence(unit.conn, company_id, sequence_id)
        row = await queries.get_enrolment(unit.conn, sequence_id, enrolment_id)
        if row is None:
            raise HTTPException(404, f"enrolment {enrolment_id} is not in sequence {sequence_id}")
        if row["status"] not in enrolments.LIVE:
            raise HTTPException(409, f"enrolment {enrolment_id} is already {row['status']}")
        await enrolments.stop(unit, [enrolment_id], "manual", {})
        row = await queries.get_enrolment(unit.conn, sequence_id, enrolment_id)
        assert row is not None
        return await _detail(unit.conn, row)


@router.get(
    "/leads/{lead_id}/enrolments",
    response_model=list[EnrolmentOut],
    responses=ex.listed(EnrolmentOut),
)
async def lead_enrolments(
    company_id: AgentCompany, lead_id: LeadId, ingest: IngestDep
) -> list[EnrolmentOut]:
    """Every sequence the lead is or was in."""
    async with ingest.plat.pool.acquire() as conn:
        if await queries.unknown_leads(conn, company_id, [lead_id]):
            raise HTTPException(404, f"lead {lead_id} does not exist in company {company_id}")
        rows = await queries.lead_enrolments(conn, company_id, lead_id)
        return [EnrolmentOut.of(r) for r in rows]


@router.get("/optout-settings", response_model=OptOutSettings)
async def get_optout_settings(company_id: AgentCompany, ingest: IngestDep) -> OptOutSettings:
    value = await ingest.plat.pool.fetchrow(
        "SELECT settings->'optout_across_channels' AS v FROM companies WHERE id = $1", company_id
    )
    if value is None:
        raise HTTPException(404, f"company {company_id} does not exist")
    return OptOutSettings(across_channels=value["v"] is not False)


@router.put("/optout-settings", response_model=OptOutSettings)
async def put_optout_settings(
    company_id: AdminCompany, body: OptOutSettings, ingest: IngestDep
) -> OptOutSettings:
    """Turn "one opt-out across channels" on or off for the company's future opt-outs."""
    done = await ingest.plat.pool.fetchval(
        "UPDATE companies SET settings = settings || jsonb_build_object("
        "'optout_across_channels', $2::boolean), updated_at = now() WHERE id = $1 RETURNING id",
        company_id,
        body.across_channels,
    )
    if done is None:
        raise HTTPException(404, f"company {company_id} does not exist")
    return body
