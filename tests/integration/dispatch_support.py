"""Helpers for dispatch tests: companies, leads, templates and queued sends in a real database,
and the real dispatch wiring (`build_deps`) around a fake Graph server."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shvya_common.bus import JobContext, Worker
from shvya_common.contracts import JobEnvelope, SendParams
from shvya_dispatch.app import build_deps
from shvya_dispatch.handlers import Deps, handle_send
from shvya_dispatch.settings import DispatchSettings
from tests.fakes.graph_server import FakeGraph

TOKEN = "EAAG-test-token-never-logged"
PHONE_ID = "106540352242922"


def dispatch_settings(
    db_url: str, graph: FakeGraph | None = None, **extra: Any
) -> DispatchSettings:
    # WhatsApp Web's quiet hours are on by default; tests that are not about them must not
    # depend on the hour they run at.
    values: dict[str, Any] = {
        "database_url": db_url,
        "log_format": "json",
        "policy_whatsapp_web_quiet_hours": "",
    }
    if graph is not None:
        values.update(
            whatsapp_cloud_phone_id=graph.phone_number_id,
            whatsapp_cloud_token=graph.token,
            whatsapp_cloud_base_url=graph.base_url,
            whatsapp_cloud_api_version=graph.version,
            whatsapp_cloud_timeout_seconds=2.0,
            whatsapp_cloud_connect_timeout_seconds=1.0,
        )
    values.update(extra)
    return DispatchSettings(_env_file=None, **values)  # type: ignore[call-arg]


class Dispatcher:
    """The real dispatch dependencies in this process; `send` runs the handler on a queued send."""

    def __init__(self, pool: asyncpg.Pool, settings: DispatchSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.stack = AsyncExitStack()
        self.deps: Deps | None = None

    async def __aenter__(self) -> Dispatcher:
        self.deps = await build_deps(self.settings, self.pool, self.stack)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    async def send(self, message_id: uuid.UUID, params: SendParams) -> dict[str, Any]:
        """Claim the send as a delivery would (attempt and lease in the row), then run it."""
        assert self.deps is not None
        envelope = JobEnvelope(
            job_id=message_id,
            task="dispatch.send",
            priority=100,
            params=params.model_dump(mode="json"),
            company_id=params.company_id,
            lead_id=params.lead_id,
            enqueued_at=datetime.now(UTC),
        )
        claim = await self.deps.sends.claim(envelope, max_attempts=6, lease=30.0, worker="test")
        assert claim.action == "run", claim
        job = JobContext(
            job_id=message_id,
            task="dispatch.send",
            priority=100,
            attempt=claim.attempt,
            company_id=params.company_id,
            lead_id=params.lead_id,
            prior_status=claim.prior_status,
        )
        try:
            return await handle_send(params, job, self.deps)
        except BaseException:
            # As the consumer loop would: the run is over, so its lease is freed for the next.
            await self.pool.execute(
                "UPDATE messages SET lease_until = NULL WHERE id = $1", message_id
            )
            raise


@asynccontextmanager
async def send_worker(plat: Any, deps: Deps) -> AsyncIterator[Worker]:
    """Dispatch's dispatch.send consumer loop on `plat`'s bus, retrying after 0.2 s then 0.4 s
    (three attempts in all), one send at a time."""
    worker = Worker(
        service="dispatch",
        bus=plat.bus,
        nc=plat.nc,
        handlers={"dispatch.send": functools.partial(handle_send, deps=deps)},
        retry_schedule=[0.2, 0.4],
        concurrency=1,
        ack_wait=5.0,
        poll_seconds=0.05,
    )
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def make_company(
    pool: asyncpg.Pool, *, timezone: str = "UTC", settings: dict[str, Any] | None = None
) -> uuid.UUID:
    company_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO companies (name, timezone, settings) VALUES ('Acme', $1, $2) RETURNING id",
        timezone,
        settings or {},
    )
    return company_id


async def make_lead(
    pool: asyncpg.Pool,
    company_id: uuid.UUID,
    *,
    phone: str | None = "+15551230001",
    email: str | None = None,
    last_inbound_at: datetime | None = None,
    timezone: str | None = None,
    contact_name: str = "Asha Rao",
) -> uuid.UUID:
    lead_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO leads (company_id, phone_e164, email, contact_name, timezone,"
        " last_inbound_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        company_id,
        phone,
        email,
        contact_name,
        timezone,
        last_inbound_at,
    )
    return lead_id


async def make_template(
    pool: asyncpg.Pool,
    company_id: uuid.UUID,
    name: str,
    body: str,
    variables: list[Any],
    *,
    channel: str = "whatsapp_cloud",
    status: str = "approved",
    language: str = "en_US",
) -> uuid.UUID:
    template_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO templates (company_id, name, channel, language, body, variables, status)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        company_id,
        name,
        channel,
        language,
        body,
        variables,
        status,
    )
    return template_id


async def queue_send(
    pool: asyncpg.Pool,
    company_id: uuid.UUID,
    lead_id: uuid.UUID,
    *,
    to: str = "+15551230001",
    channel: str = "whatsapp_cloud",
    text: str = "Thanks for writing! Here is what you asked about.",
    purpose: str = "reply",
    template_id: uuid.UUID | None = None,
) -> tuple[uuid.UUID, SendParams]:
    """An outbound message row in 'queued', as `Unit.request_send` writes it."""
    params = SendParams(
        company_id=company_id,
        lead_id=lead_id,
        channel=channel,
        to=to,
        text=text,  # type: ignore[arg-type]
        template_id=template_id,
        send_key=f"test:{uuid.uuid4()}",
        purpose=purpose,  # type: ignore[arg-type]
    )
    message_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO messages (id, company_id, lead_id, direction, channel, body, status,"
        " send_key, recipient, priority, meta, send_params)"
        " VALUES ($1, $2, $3, 'outbound', $4, $5, 'queued', $6, $7, 100, $8, $9)",
        message_id,
        company_id,
        lead_id,
        channel,
        text,
        params.send_key,
        to,
        {"purpose": purpose},
        params.model_dump(mode="json"),
    )
    return message_id, params


async def message_row(pool: asyncpg.Pool, message_id: uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT status, provider_message_id, sent_at, last_error, meta FROM messages WHERE id = $1",
        message_id,
    )
    assert row is not None
    return row


async def event_types(pool: asyncpg.Pool, company_id: uuid.UUID) -> list[str]:
    rows = await pool.fetch(
        "SELECT type FROM events WHERE company_id = $1 ORDER BY created_at", company_id
    )
    return [r["type"] for r in rows]
