"""`report.refresh`: compute a company's reports into `report_caches` (`shvya_common.reports`),
each in its own transaction, so one slow or failing report never discards the others."""

from __future__ import annotations

from typing import Any

import structlog

import shvya_common.reports as reports
from shvya_common.bus import JobContext
from shvya_common.contracts import ReportParams
from shvya_scheduler.registry import Deps, registry

log = structlog.get_logger(__name__)


@registry.task("report.refresh")
async def handle_reports(params: ReportParams, job: JobContext, deps: Deps) -> dict[str, Any]:
    computed: dict[str, str] = {}
    async with deps.bus.pool.acquire() as conn:
        for name in dict.fromkeys(params.reports):
            try:
                async with conn.transaction():
                    report = await reports.compute(conn, name, params.company_id, params.days)
            except LookupError:
                return {"status": "gone", "computed": computed}
            computed[report.key] = report.computed_at.isoformat()
    log.info("reports_refreshed", company_id=str(params.company_id), reports=len(computed))
    return {"computed": computed}
