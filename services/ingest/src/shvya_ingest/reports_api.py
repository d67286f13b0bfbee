"""Reports of a company, as `report_caches` holds them (filled by `report.refresh` on a
schedule), each with the time it was computed.

    GET /v1/reports                       the reports and their ages
    GET /v1/reports/{name}?days=30        one report

A report that was never computed (or `?refresh=true`) is computed now, stored, and served.
Names: `funnel`, `response_times`, `volumes`, `ai_vs_human` (see shvya_common.reports).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

import shvya_common.reports as reports
from shvya_common.contracts.jobs import REPORTS
from shvya_ingest import examples as ex
from shvya_ingest.api import IngestDep
from shvya_ingest.auth import AgentCompany
from shvya_ingest.v1.common import ERRORS, V1

router = APIRouter(
    prefix="/v1/reports",
    dependencies=V1,
    responses=ERRORS,
    tags=["reports"],
)


class ReportOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "report": "volumes",
                "key": "volumes:30d",
                "company_id": ex.COMPANY_ID,
                "computed_at": ex.UPDATED,
                "cached": True,
                "data": {"days": 30, "inbound": 1204, "outbound": 1388, "leads_created": 212},
            }
        )
    )

    report: str
    key: str = Field(description="The report_caches key: the name, and the period if any.")
    company_id: uuid.UUID
    computed_at: datetime
    cached: bool = Field(description="False when computed for this request.")
    data: dict[str, Any]


class ReportIndex(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "reports": ["funnel", "response_times", "volumes", "ai_vs_human"],
                "cached": {"funnel": ex.UPDATED, "volumes:30d": ex.UPDATED},
            }
        )
    )

    reports: list[str]
    cached: dict[str, datetime] = Field(description="Each cached report's computed_at.")


@router.get("", response_model=ReportIndex)
async def list_reports(company_id: AgentCompany, ingest: IngestDep) -> ReportIndex:
    pool = ingest.plat.pool
    if not await pool.fetchval("SELECT 1 FROM companies WHERE id = $1", company_id):
        raise HTTPException(404, f"company_id {company_id} does not exist")
    rows = await pool.fetch(
        "SELECT report_key, computed_at FROM report_caches WHERE company_id = $1"
        " ORDER BY report_key",
        company_id,
    )
    return ReportIndex(
        reports=list(REPORTS), cached={r["report_key"]: r["computed_at"] for r in rows}
    )


@router.get("/{name}", response_model=ReportOut)
async def get_report(
    company_id: AgentCompany,
    name: Annotated[str, Path(description="funnel, response_times, volumes or ai_vs_human.")],
    ingest: IngestDep,
    days: Annotated[int, Query(ge=1, le=366, description="Period of windowed reports.")] = 30,
    refresh: Annotated[bool, Query(description="Compute it now even if cached.")] = False,
) -> ReportOut:
    if name not in REPORTS:
        raise HTTPException(404, f"unknown report {name!r}; reports: {', '.join(REPORTS)}")
    pool = ingest.plat.pool
    found = None if refresh else await reports.cached(pool, company_id, name, days)
    cached = found is not None
    if found is None:
        async with pool.acquire() as conn, conn.transaction():
            try:
                found = await reports.compute(conn, name, company_id, days)
            except LookupError as err:
                raise HTTPException(404, str(err)) from err
    return ReportOut(
        report=name,
        key=found.key,
        company_id=company_id,
        computed_at=found.computed_at,
        cached=cached,
        data=found.data,
    )
