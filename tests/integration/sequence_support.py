"""A sequences test rig in one process, against the test's real NATS and PostgreSQL: ingest's
real app (its API over ASGI), the scheduler's real registry in a worker with its timer loop and
event feed, and dispatch's real handlers (channels, policy engine) in a second worker. Waits are
compressed by giving steps short durations; nothing asserts on wall-clock time."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from shvya_common.bus import Worker
from shvya_common.runtime import Platform
from shvya_dispatch.app import make_handlers as dispatch_handlers
from shvya_dispatch.settings import DispatchSettings
from shvya_ingest.app import create_app
from shvya_ingest.settings import IngestSettings
from shvya_scheduler import tasks
from shvya_scheduler.feed import feed_loop
from shvya_scheduler.handlers import timer_loop
from shvya_scheduler.registry import Deps, registry
from shvya_scheduler.settings import SchedulerSettings
from tests.support import eventually

STAGES = ["New", "Contacted", "Qualified", "Proposal", "Closed"]


def _values(base_env: dict[str, str], **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {k.lower(): v for k, v in base_env.items()}
    values.update(overrides)
    return values


@dataclass
class Rig:
    client: httpx.AsyncClient
    pool: asyncpg.Pool
    company_id: uuid.UUID
    log_file: Path

    @property
    def base(self) -> str:
        return f"/admin/companies/{self.company_id}"

    async def api(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        response = await self.client.request(method, self.base + path, json=body)
        assert response.status_code == expect, (response.status_code, response.text)
        return response.json() if response.content else None

    async def create_sequence(self, **body: Any) -> dict[str, Any]:
        body.setdefault("name", "Nurture")
        body.setdefault("channel", "whatsapp_cloud")
        created: dict[str, Any] = await self.api("POST", "/sequences", body, expect=201)
        return created

    async def enrol(self, sequence_id: str, **body: Any) -> dict[str, Any]:
        response = await self.client.post(
            f"{self.base}/sequences/{sequence_id}/enrolments", json=body
        )
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result

    async def enrolment(self, sequence_id: str, enrolment_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = await self.api(
            "GET", f"/sequences/{sequence_id}/enrolments/{enrolment_id}"
        )
        return detail

    async def wait_for(
        self, sequence_id: str, enrolment_id: str, predicate: Any, timeout: float = 30.0
    ) -> dict[str, Any]:
        found: dict[str, Any] = await eventually(
            lambda: self.enrolment(sequence_id, enrolment_id), predicate, timeout=timeout
        )
        return found

    async def lead(
        self,
        *,
        phone: str | None = "+15550001",
        email: str | None = None,
        name: str = "Asha Rao",
        timezone: str | None = None,
        attributes: dict[str, Any] | None = None,
        stage: str = "New",
    ) -> uuid.UUID:
        lead_id: uuid.UUID = await self.pool.fetchval(
            "INSERT INTO leads (company_id, pipeline_id, stage_id, phone_e164, email,"
            " contact_name, timezone, attributes)"
            " SELECT $1, p.id, s.id, $2, $3, $4, $5, $6 FROM pipelines p"
            " JOIN stages s ON s.pipeline_id = p.id AND s.name = $7"
            " WHERE p.company_id = $1 AND p.is_default RETURNING id",
            self.company_id,
            phone,
            email,
            name,
            timezone,
            attributes or {},
            stage,
        )
        return lead_id

    async def reply(self, phone: str, text: str = "Yes, tell me more", **extra: Any) -> None:
        """The lead writes in, through ingest's real /inbound-message."""
        body = {
            "phone_number": phone,
            "message_text": text,
            "channel": "whatsapp_cloud",
            "company_id": str(self.company_id),
            **extra,
        }
        response = await self.client.post("/inbound-message", json=body)
        assert response.status_code == 200, response.text

    async def outbound(self, lead_id: uuid.UUID) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(
            "SELECT id, body, channel, status, send_key, recipient, meta, priority"
            " FROM messages WHERE lead_id = $1 AND direction = 'outbound' ORDER BY created_at",
            lead_id,
        )
        return rows

    async def fast_forward(self, enrolment_id: str) -> int:
        """Make the enrolment's parked run due now, as if its wait had passed."""
        status = await self.pool.execute(
            "UPDATE timers SET due_at = now() WHERE status = 'pending'"
            " AND idempotency_key LIKE 'sequence:' || $1 || ':%'",
            enrolment_id,
        )
        return int(status.split()[-1])

    async def history_is(
        self, sequence_id: str, enrolment_id: str, predicate: Any, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The enrolment once its step outcomes satisfy `predicate`."""
        return await self.wait_for(
            sequence_id, enrolment_id, lambda d: predicate(step_outcomes(d)), timeout
        )

    def logged(self) -> list[dict[str, Any]]:
        """What the log channel actually sent (one line per send that left)."""
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line]


def step_outcomes(detail: dict[str, Any]) -> list[tuple[str, str]]:
    return [(h["step_key"], h["outcome"]) for h in detail["history"] if h["kind"] == "step"]


@asynccontextmanager
async def sequence_rig(
    plat: Platform,
    base_env: dict[str, str],
    tmp_path: Path,
    *,
    dispatch: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
) -> AsyncIterator[Rig]:
    """Ingest's app, the scheduler (worker, timers, feed) and dispatch, all running."""
    tasks.load()
    log_file = tmp_path / f"log-channel-{uuid.uuid4().hex[:6]}.jsonl"
    scheduler_settings = SchedulerSettings(
        **_values(base_env, tick_seconds=0.1, feed_tick_seconds=0.1, **(scheduler or {}))
    )
    dispatch_settings = DispatchSettings(
        **_values(base_env, log_channel_file=str(log_file), **(dispatch or {}))
    )
    ingest_settings = IngestSettings(**_values(base_env))
    stopping = asyncio.Event()
    async with AsyncExitStack() as stack:
        workers = []
        for service, handlers in (
            ("scheduler", registry.bind(deps=Deps(bus=plat.bus, settings=scheduler_settings))),
            ("dispatch", await dispatch_handlers(dispatch_settings)(plat, stack)),
        ):
            worker = Worker(
                service=service,
                bus=plat.bus,
                nc=plat.nc,
                handlers=handlers,
                retry_schedule=scheduler_settings.retry_schedule,
                concurrency=4,
                ack_wait=scheduler_settings.ack_wait_seconds,
                poll_seconds=scheduler_settings.worker_poll_seconds,
            )
            await worker.start()
            workers.append(worker)
        loops = [
            asyncio.create_task(timer_loop(plat.bus, stopping, 0.1, 200)),
            asyncio.create_task(feed_loop(plat.bus, stopping, 0.1, 500)),
        ]
        app = create_app(ingest_settings)
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                headers = {"Authorization": f"Bearer {base_env['ADMIN_TOKEN']}"}
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://ingest", headers=headers
                ) as client:
                    company_id = await _company(plat.pool)
                    yield Rig(client, plat.pool, company_id, log_file)
        finally:
            stopping.set()
            await asyncio.gather(*loops)
            for worker in workers:
                await worker.stop()


async def _company(pool: asyncpg.Pool) -> uuid.UUID:
    """A company with its default pipeline and the usual stages, as ingest sets one up."""
    async with pool.acquire() as conn, conn.transaction():
        company_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO companies (name, timezone) VALUES ('Acme Solar', 'UTC') RETURNING id"
        )
        pipeline = await conn.fetchval(
            "INSERT INTO pipelines (company_id, name, is_default) VALUES ($1, 'Sales', true)"
            " RETURNING id",
            company_id,
        )
        await conn.executemany(
            "INSERT INTO stages (pipeline_id, name, position) VALUES ($1, $2, $3)",
            [(pipeline, name, n) for n, name in enumerate(STAGES, start=1)],
        )
    return company_id
