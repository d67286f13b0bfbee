"""Helpers for the campaign, schedule and report tests: leads in bulk, the scheduler's and
dispatch's real handlers running in this process (with the timer loop that fires `run_at`
jobs), and the ingest app in-process over ASGI, called with each company's own API key."""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from shvya_common.bus import Worker
from shvya_common.runtime import Platform, platform
from shvya_common.settings import CommonSettings
from shvya_dispatch.app import build_deps
from shvya_dispatch.handlers import handle_send
from shvya_dispatch.settings import DispatchSettings
from shvya_ingest.app import create_app
from shvya_ingest.settings import IngestSettings
from shvya_scheduler import tasks
from shvya_scheduler.handlers import timer_loop
from shvya_scheduler.registry import Deps, registry
from shvya_scheduler.settings import SchedulerSettings
from tests.keys import make_key

tasks.load()

NO_QUIET_HOURS = {"policies": {"email": {"quiet_hours": None}}}


@pytest.fixture(name="cplat")
async def cplat_fixture(base_env: dict[str, str]) -> AsyncIterator[Platform]:
    """The platform in this process, with room in the pool for two workers and their runs."""
    values = {k.lower(): v for k, v in base_env.items() if k != "ADMIN_TOKEN"}
    values.update(db_pool_max="12")
    settings = CommonSettings(_env_file=None, **values)  # type: ignore[call-arg]
    async with platform(settings, "test") as plat:
        yield plat


def scheduler_settings(env: dict[str, str], **extra: Any) -> SchedulerSettings:
    values = {k.lower(): v for k, v in env.items() if k != "ADMIN_TOKEN"}
    values.update(extra)
    return SchedulerSettings(_env_file=None, **values)  # type: ignore[call-arg]


async def make_company(
    pool: asyncpg.Pool,
    *,
    name: str = "Acme Solar",
    timezone: str = "UTC",
    settings: dict[str, Any] | None = None,
) -> uuid.UUID:
    company_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO companies (name, timezone, settings) VALUES ($1, $2, $3) RETURNING id",
        name,
        timezone,
        NO_QUIET_HOURS if settings is None else settings,
    )
    return company_id


async def make_leads(
    pool: asyncpg.Pool,
    company_id: uuid.UUID,
    emails: Sequence[str | None],
    *,
    names: Sequence[str] | None = None,
    timezones: Sequence[str | None] | None = None,
    attributes: Sequence[dict[str, Any]] | None = None,
) -> list[uuid.UUID]:
    """Leads in one statement, in order; a lead without an email gets a phone number."""
    n = len(emails)
    rows = await pool.fetch(
        "INSERT INTO leads (company_id, email, phone_e164, contact_name, timezone, attributes,"
        " created_at)"
        " SELECT $1, e, CASE WHEN e IS NULL THEN '+1555' || lpad(i::text, 7, '0') END, nm, tz,"
        " attr, now() - make_interval(secs => ($7 - i)::float8 / 1000)"
        " FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::int[])"
        " AS u(e, nm, tz, attr, i) ORDER BY i RETURNING id",
        company_id,
        list(emails),
        list(names or [f"Lead {i} Person" for i in range(n)]),
        list(timezones or [None] * n),
        list(attributes or [{}] * n),
        list(range(n)),
        n,
    )
    return [r["id"] for r in rows]


@asynccontextmanager
async def scheduler_worker(
    plat: Platform, settings: SchedulerSettings, *, timers: bool = True
) -> AsyncIterator[Worker]:
    """The scheduler's registered handlers (email.sequence, report.refresh, ...) and, with
    `timers`, its timer loop, so runs enqueued with `run_at` come back when due."""
    worker = Worker(
        service="scheduler",
        bus=plat.bus,
        nc=plat.nc,
        handlers=registry.bind(deps=Deps(bus=plat.bus, settings=settings)),
        retry_schedule=settings.retry_schedule,
        concurrency=4,
        ack_wait=settings.ack_wait_seconds,
        poll_seconds=settings.worker_poll_seconds,
    )
    stopping = asyncio.Event()
    loop = asyncio.create_task(timer_loop(plat.bus, stopping, 0.05, 500)) if timers else None
    await worker.start()
    try:
        yield worker
    finally:
        stopping.set()
        await worker.stop()
        if loop is not None:
            await loop


@asynccontextmanager
async def dispatch_worker(
    plat: Platform, settings: DispatchSettings, concurrency: int = 8
) -> AsyncIterator[Worker]:
    """Dispatch's real send handler (channels, router, policies) in this process."""
    async with AsyncExitStack() as stack:
        deps = await build_deps(settings, plat.pool, stack)
        worker = Worker(
            service="dispatch",
            bus=plat.bus,
            nc=plat.nc,
            handlers={"dispatch.send": functools.partial(handle_send, deps=deps)},
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


AS_COMPANY = re.compile(r"^/as/([0-9a-f-]{36})(/.*)$")


def as_company(company_id: uuid.UUID, path: str) -> str:
    """`path` called with `company_id`'s admin key (see `ingest_client`)."""
    return f"/as/{company_id}{path}"


@asynccontextmanager
async def ingest_client(env: dict[str, str], **overrides: str) -> AsyncIterator[httpx.AsyncClient]:
    """The ingest app in this process. A request to `as_company(company, path)` goes to `path`
    with an admin key of that company (made on first use), as a company's own system calls it;
    any other request carries the operator's token."""
    values = {k.lower(): v for k, v in {**env, **overrides}.items()}
    app = create_app(IngestSettings(_env_file=None, **values))  # type: ignore[call-arg]
    keys: dict[uuid.UUID, str] = {}

    async def sign(request: httpx.Request) -> None:
        found = AS_COMPANY.match(request.url.path)
        if found is None:
            return
        company = uuid.UUID(found[1])
        if company not in keys:
            keys[company] = await make_key(env["DATABASE_URL"], company)
        request.url = request.url.copy_with(path=found[2])
        request.headers["Authorization"] = f"Bearer {keys[company]}"

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://ingest",
            headers={"Authorization": f"Bearer {env['ADMIN_TOKEN']}"},
            event_hooks={"request": [sign]},
            timeout=60,
        ) as client:
            yield client


async def run_results(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> list[dict[str, Any]]:
    """The results of the campaign's completed runs, in run order."""
    rows = await pool.fetch(
        "SELECT result FROM jobs WHERE task_name = 'email.sequence' AND status = 'completed'"
        " AND task_params->>'campaign_id' = $1 AND task_params->>'action' = 'run'"
        " ORDER BY (task_params->>'run')::int, completed_at",
        str(campaign_id),
    )
    return [r["result"] for r in rows]


async def recipient_statuses(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = $1"
        " GROUP BY status",
        campaign_id,
    )
    return {r["status"]: r["n"] for r in rows}
