"""Recurring schedules of a company: cron expressions on the company's wall clock that send a
campaign again to new matches of its audience, summarise recently active leads, or refresh the
reports. The scheduler's schedule loop fires them (shvya_scheduler.schedules).

    POST   /v1/schedules                 create
    GET    /v1/schedules                 list
    GET    /v1/schedules/{schedule_id}   read, with the next firings
    PATCH  /v1/schedules/{schedule_id}   edit (cron, name, enabled, …)
    DELETE /v1/schedules/{schedule_id}   delete

A cron expression that does not parse, or never fires, is refused with 422 and the reason.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shvya_common.contracts.jobs import ReportName
from shvya_common.cron import CronError, check_expression, upcoming, zone
from shvya_ingest import examples as ex
from shvya_ingest.api import IngestDep
from shvya_ingest.auth import AdminCompany, AgentCompany
from shvya_ingest.v1.common import ERRORS, V1, Offset, ScheduleId, page_limit

Kind = Literal["campaign", "summaries", "reports"]
COLUMNS = (
    "s.id, s.company_id, s.name, s.kind, s.cron, s.campaign_id, s.params, s.enabled,"
    " s.next_run_at, s.last_run_at, s.last_slot, s.last_result, s.last_error, s.runs,"
    " s.created_at, s.updated_at, c.timezone"
)

router = APIRouter(
    prefix="/v1/schedules",
    dependencies=V1,
    responses=ERRORS,
    tags=["schedules"],
)


class ScheduleIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra=ex.examples(
            {
                "name": "Weekly reports",
                "kind": "reports",
                "cron": "0 9 * * 1",
                "reports": ["funnel", "volumes"],
                "days": 7,
            },
            {
                "name": "Monday newsletter",
                "kind": "campaign",
                "cron": "0 9 * * 1",
                "campaign_id": ex.CAMPAIGN_ID,
            },
        ),
    )

    name: str = Field(min_length=1, max_length=200, examples=["Monday newsletter"])
    kind: Kind
    cron: str = Field(
        min_length=1,
        max_length=200,
        examples=["0 9 * * 1"],
        description="Five fields (minute hour day month weekday) or @daily-style, read on the"
        " company's wall clock.",
    )
    campaign_id: uuid.UUID | None = Field(None, description="For kind 'campaign' only.")
    reports: list[ReportName] | None = Field(None, description="For kind 'reports'; all if unset.")
    days: int | None = Field(None, ge=1, le=366, description="Reports' period; 30 if unset.")
    enabled: bool = True

    @model_validator(mode="after")
    def _fits_kind(self) -> ScheduleIn:
        if (self.kind == "campaign") != (self.campaign_id is not None):
            raise ValueError("campaign_id is given exactly for kind 'campaign'")
        if self.kind != "reports" and (self.reports is not None or self.days is not None):
            raise ValueError("reports and days are for kind 'reports' only")
        return self


class SchedulePatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra=ex.examples({"cron": "30 8 * * 1-5"}, {"enabled": False}),
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    cron: str | None = Field(None, min_length=1, max_length=200)
    reports: list[ReportName] | None = None
    days: int | None = Field(None, ge=1, le=366)
    enabled: bool | None = None


class ScheduleOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.SCHEDULE_ID,
                "company_id": ex.COMPANY_ID,
                "name": "Weekly reports",
                "kind": "reports",
                "cron": "0 9 * * 1",
                "timezone": ex.TIMEZONE,
                "campaign_id": None,
                "params": {"reports": ["funnel", "volumes"], "days": 7},
                "enabled": True,
                "next_run_at": "2026-05-11T07:00:00Z",
                "next_runs_local": ["2026-05-11T09:00:00+02:00", "2026-05-18T09:00:00+02:00"],
                "last_run_at": "2026-05-04T07:00:02Z",
                "last_slot": "2026-05-04T07:00:00Z",
                "last_result": {"reports": 2},
                "last_error": None,
                "runs": 5,
                "created_at": ex.CREATED,
                "updated_at": ex.UPDATED,
            }
        )
    )

    id: uuid.UUID
    company_id: uuid.UUID
    name: str
    kind: Kind
    cron: str
    timezone: str = Field(description="The company's zone, in which the expression is read.")
    campaign_id: uuid.UUID | None
    params: dict[str, Any]
    enabled: bool
    next_run_at: datetime | None
    next_runs_local: list[str] = Field(description="The next firings on the company's clock.")
    last_run_at: datetime | None
    last_slot: datetime | None
    last_result: dict[str, Any] | None
    last_error: str | None
    runs: int
    created_at: datetime
    updated_at: datetime


def _first_fire(cron: str, timezone: str) -> tuple[str, datetime]:
    try:
        text = check_expression(cron)
        return text, upcoming(text, zone(timezone), after=datetime.now(UTC), count=1)[0]
    except CronError as err:
        raise HTTPException(422, str(err)) from err


def _out(row: asyncpg.Record) -> ScheduleOut:
    tz = zone(row["timezone"])
    local: list[str] = []
    if row["enabled"] and row["next_run_at"] is not None:
        moments = [row["next_run_at"]]
        try:
            moments += upcoming(row["cron"], tz, after=row["next_run_at"], count=2)
        except CronError:
            pass
        local = [m.astimezone(tz).isoformat() for m in moments]
    return ScheduleOut(
        **{k: row[k] for k in row.keys() if k in ScheduleOut.model_fields and k != "timezone"},
        timezone=tz.key,
        next_runs_local=local,
    )


async def _company_zone(conn: asyncpg.Pool | asyncpg.Connection, company_id: uuid.UUID) -> str:
    name = await conn.fetchval("SELECT timezone FROM companies WHERE id = $1", company_id)
    if name is None:
        raise HTTPException(404, f"company_id {company_id} does not exist")
    return str(name)


async def _get(pool: asyncpg.Pool, company_id: uuid.UUID, schedule_id: uuid.UUID) -> Any:
    row = await pool.fetchrow(
        f"SELECT {COLUMNS} FROM schedules s JOIN companies c ON c.id = s.company_id"
        " WHERE s.id = $1 AND s.company_id = $2",
        schedule_id,
        company_id,
    )
    if row is None:
        raise HTTPException(404, f"schedule {schedule_id} does not exist in company {company_id}")
    return row


def _report_params(reports: list[ReportName] | None, days: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if reports is not None:
        params["reports"] = list(dict.fromkeys(reports))
    if days is not None:
        params["days"] = days
    return params


@router.post("", status_code=201, response_model=ScheduleOut)
async def create_schedule(
    company_id: AdminCompany, body: ScheduleIn, ingest: IngestDep
) -> ScheduleOut:
    pool = ingest.plat.pool
    timezone = await _company_zone(pool, company_id)
    cron, first = _first_fire(body.cron, timezone)
    if body.campaign_id is not None:
        found = await pool.fetchval(
            "SELECT 1 FROM campaigns WHERE id = $1 AND company_id = $2",
            body.campaign_id,
            company_id,
        )
        if not found:
            raise HTTPException(
                404, f"campaign {body.campaign_id} does not exist in company {company_id}"
            )
    schedule_id = await pool.fetchval(
        "INSERT INTO schedules (company_id, name, kind, cron, campaign_id, params, enabled,"
        " next_run_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        company_id,
        body.name,
        body.kind,
        cron,
        body.campaign_id,
        _report_params(body.reports, body.days),
        body.enabled,
        first,
    )
    return _out(await _get(pool, company_id, schedule_id))


@router.get("", response_model=list[ScheduleOut], responses=ex.listed(ScheduleOut))
async def list_schedules(
    company_id: AgentCompany,
    ingest: IngestDep,
    limit: Annotated[int, page_limit(500)] = 100,
    offset: Offset = 0,
) -> list[ScheduleOut]:
    pool = ingest.plat.pool
    await _company_zone(pool, company_id)
    rows = await pool.fetch(
        f"SELECT {COLUMNS} FROM schedules s JOIN companies c ON c.id = s.company_id"
        " WHERE s.company_id = $1 ORDER BY s.created_at, s.id LIMIT $2 OFFSET $3",
        company_id,
        limit,
        offset,
    )
    return [_out(r) for r in rows]


@router.get("/{schedule_id}", response_model=ScheduleOut)
async def get_schedule(
    company_id: AgentCompany, schedule_id: ScheduleId, ingest: IngestDep
) -> ScheduleOut:
    return _out(await _get(ingest.plat.pool, company_id, schedule_id))


@router.patch("/{schedule_id}", response_model=ScheduleOut)
async def update_schedule(
    company_id: AdminCompany, schedule_id: ScheduleId, body: SchedulePatch, ingest: IngestDep
) -> ScheduleOut:
    """Edit a schedule; a new expression, or enabling it, computes the next firing from now."""
    pool = ingest.plat.pool
    row = await _get(pool, company_id, schedule_id)
    if (body.reports is not None or body.days is not None) and row["kind"] != "reports":
        raise HTTPException(422, "reports and days are for kind 'reports' only")
    cron, next_run_at = row["cron"], row["next_run_at"]
    enabled = row["enabled"] if body.enabled is None else body.enabled
    if body.cron is not None or (enabled and not row["enabled"]):
        cron, next_run_at = _first_fire(body.cron or row["cron"], row["timezone"])
    params = dict(row["params"] or {})
    if row["kind"] == "reports":
        params.update(_report_params(body.reports, body.days))
    await pool.execute(
        "UPDATE schedules SET name = $3, cron = $4, params = $5, enabled = $6, next_run_at = $7,"
        " updated_at = now() WHERE id = $1 AND company_id = $2",
        schedule_id,
        company_id,
        body.name or row["name"],
        cron,
        params,
        enabled,
        next_run_at,
    )
    return _out(await _get(pool, company_id, schedule_id))


@router.delete("/{schedule_id}", status_code=204)
async def delete_schedule(
    company_id: AdminCompany, schedule_id: ScheduleId, ingest: IngestDep
) -> Response:
    deleted = await ingest.plat.pool.fetchval(
        "DELETE FROM schedules WHERE id = $1 AND company_id = $2 RETURNING id",
        schedule_id,
        company_id,
    )
    if deleted is None:
        raise HTTPException(404, f"schedule {schedule_id} does not exist in company {company_id}")
    return Response(status_code=204)
