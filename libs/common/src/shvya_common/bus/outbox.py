"""The outbox: rows are committed first, published after COMMIT, and confirmed in batches.

A unit of work (`JobBus.unit()`) owns one transaction. Everything it enqueues (jobs, send
requests, rows a timer or a replay puts back) is written to PostgreSQL inside it, and only
after COMMIT does the `Publisher` send the messages to JetStream, with `Nats-Msg-Id` set to
`<row id>:<generation>`. A publish that fails or times out is not an error for the caller: the
row is committed, and the relay republishes it (`shvya_common.bus.relay`). A rolled-back unit
publishes nothing, so no message ever names a row that does not exist.

A unit opened with `wait_publish=False` returns at COMMIT and leaves its publish running
behind it (ingest's filing: an HTTP answer that means "committed" need not wait for
JetStream's ack, and the flusher that filed it can take the next batch). At most
`BEHIND_LIMIT` such publishes run at once; past that the next caller waits for one to end, so
a slow NATS slows the callers instead of piling up tasks. `close()` waits for them.

Confirmations (`published_at`) are written in batches by a background flusher, not one
statement per publish, so committing first costs ingest about one extra statement per batch
of requests. A worker's claim also sets `published_at`, so most confirmations find the row
already marked, and a confirmation skips a row another transaction holds (see
`ledgers.mark_published`). Publishing skips a disconnected NATS at once instead of waiting out the
publish timeout: the relay catches up when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError
from pydantic import BaseModel

from shvya_common import tracing
from shvya_common.bus.ledgers import (
    JOB_COLUMNS,
    SEND_COLUMNS,
    LedgerName,
    Outgoing,
    mark_published,
    outgoing_from_row,
)
from shvya_common.bus.topology import TopologyKeeper
from shvya_common.contracts.jobs import SendParams, task_spec
from shvya_common.contracts.subjects import Topology
from shvya_common.ids import new_id
from shvya_common.metrics import JOBS_ENQUEUED, OUTBOX_PUBLISHED
from shvya_common.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_SECONDS = 5.0
CONFIRM_INTERVAL_SECONDS = 0.5
# Publishes left running behind their units' COMMIT (`wait_publish=False`), at most.
BEHIND_LIMIT = 8
Source = Literal["inline", "relay", "reconciler"]

_INSERT_JOB = f"""
INSERT INTO jobs (id, task_name, task_params, priority, idempotency_key, company_id, lead_id,
                  max_attempts, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued')
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {JOB_COLUMNS}
"""

_INSERT_JOBS = f"""
INSERT INTO jobs (id, task_name, task_params, priority, idempotency_key, company_id, lead_id,
                  max_attempts, traceparent, status)
SELECT * , 'queued' FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::int[], $5::text[],
                                 $6::uuid[], $7::uuid[], $8::int[], $9::text[])
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {JOB_COLUMNS}
"""

_EXISTING_JOBS = (
    "SELECT id, idempotency_key, status, priority FROM jobs WHERE idempotency_key = ANY($1)"
)

_INSERT_ENQUEUE_TIMER = """
INSERT INTO timers (kind, due_at, task_name, task_params, priority, idempotency_key,
                    company_id, lead_id, reason)
VALUES ('enqueue', $1, $2, $3, $4, $5, $6, $7, 'run_at')
RETURNING id
"""

_INSERT_SEND = f"""
INSERT INTO messages (id, company_id, lead_id, direction, channel, body, status, send_key,
                      job_id, reply_to_id, recipient, priority, meta, send_params, traceparent)
VALUES ($1, $2, $3, 'outbound', $4, $5, 'queued', $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (send_key) DO NOTHING
RETURNING {SEND_COLUMNS}
"""


@dataclass(frozen=True)
class Along:
    """Writes that go in the same statement as a send row, and only when it is created: CTEs
    (`name AS (INSERT ... SELECT ... FROM sent)`, comma-separated) that may read `sent`, the new
    row (SEND_COLUMNS), with their own parameters written `$A1`, `$A2`, ..."""

    ctes: str
    args: tuple[Any, ...] = ()


_ALONG_PARAM = re.compile(r"\$A(\d+)")


def _send_statement(along: Along | None) -> str:
    if along is None:
        return _INSERT_SEND
    ctes = _ALONG_PARAM.sub(lambda m: f"${13 + int(m.group(1))}", along.ctes)
    return f"WITH sent AS ({_INSERT_SEND}), {ctes} SELECT * FROM sent"


def _send_args(
    params: SendParams,
    message_id: uuid.UUID,
    priority: int,
    job_id: uuid.UUID | None,
    along: Along | None,
) -> list[Any]:
    meta: dict[str, Any] = {"purpose": params.purpose}
    if params.ai is not None:
        meta["ai"] = params.ai.model_dump(mode="json")
    return [
        message_id,
        params.company_id,
        params.lead_id,
        params.channel,
        params.text,
        params.send_key,
        job_id,
        params.reply_to_message_id,
        params.to,
        priority,
        meta,
        params.model_dump(mode="json"),
        tracing.current_traceparent(),
        *(along.args if along is not None else ()),
    ]


@dataclass(frozen=True)
class EnqueuedJob:
    """The job an enqueue call refers to; `created` is False when the idempotency key matched."""

    id: uuid.UUID
    task_name: str
    priority: int
    status: str
    created: bool


@dataclass(frozen=True)
class NewJob:
    """One job for `Unit.enqueue_jobs`; `id` may be chosen by the caller (to reference it)."""

    task: str
    params: dict[str, Any]
    idempotency_key: str | None = None
    priority: int | None = None
    company_id: uuid.UUID | None = None
    lead_id: uuid.UUID | None = None
    id: uuid.UUID = field(default_factory=new_id)
    # The trace the job continues: by default the active span's where the job is described.
    traceparent: str | None = field(default_factory=tracing.current_traceparent)


def job_params(params: BaseModel | dict[str, Any]) -> dict[str, Any]:
    if isinstance(params, BaseModel):
        return params.model_dump(mode="json")
    return dict(params)


class Publisher:
    """Publishes committed rows to JetStream and records JetStream's confirmations."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        nc: NATS,
        js: JetStreamContext,
        topology: Topology,
        keeper: TopologyKeeper | None,
        *,
        service: str,
    ) -> None:
        self.pool = pool
        self.nc = nc
        self.js = js
        self.topology = topology
        self.keeper = keeper
        self.service = service
        self._confirmed: dict[LedgerName, list[Outgoing]] = {"jobs": [], "messages": []}
        self._flusher: asyncio.Task[None] | None = None
        self._behind: set[asyncio.Task[list[Outgoing]]] = set()

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="outbox-confirm")

    async def close(self) -> None:
        if self._behind:  # what is still unacknowledged after this is the relay's
            await asyncio.wait(self._behind, timeout=PUBLISH_TIMEOUT_SECONDS)
        if self._flusher is not None:
            await cancel_and_wait([self._flusher])
            self._flusher = None
        with contextlib.suppress(Exception):
            await self.flush()

    async def publish(
        self,
        items: Sequence[Outgoing],
        *,
        source: Source = "inline",
        timeout: float = PUBLISH_TIMEOUT_SECONDS,
        confirm: bool = True,
    ) -> list[Outgoing]:
        """Publish `items` (gathered); return those JetStream acknowledged. Never raises: what
        did not go out is the relay's to republish."""
        if not items:
            return []
        if not self.nc.is_connected:
            log.info("outbox_publish_deferred", count=len(items), reason="nats disconnected")
            return []
        results = await asyncio.gather(
            *(self._publish_one(item, timeout) for item in items), return_exceptions=True
        )
        done = [item for item, ok in zip(items, results, strict=True) if ok is True]
        failed = [r for r in results if r is not True]
        if failed:
            first = failed[0]
            log.warning(
                "outbox_publish_failed",
                count=len(failed),
                source=source,
                error=type(first).__name__ if isinstance(first, BaseException) else str(first),
            )
            if self.keeper is not None and any(_means_no_stream(r) for r in failed):
                with contextlib.suppress(Exception):
                    await self.keeper.repair("a publish found no stream")
        for item in done:
            OUTBOX_PUBLISHED.labels(item.ledger, source).inc()
            JOBS_ENQUEUED.labels(self.service, item.envelope.task).inc()
            if confirm:
                self._confirmed[item.ledger].append(item)
        return done

    async def publish_behind(self, items: Sequence[Outgoing]) -> None:
        """Start publishing `items` and return without waiting for JetStream's acks; waits
        only while `BEHIND_LIMIT` earlier ones are still running."""
        while len(self._behind) >= BEHIND_LIMIT:
            await asyncio.wait(self._behind, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(self.publish(items), name="outbox-publish")
        self._behind.add(task)
        task.add_done_callback(self._behind.discard)

    async def _publish_one(self, item: Outgoing, timeout: float) -> bool:
        env = item.envelope
        subject = self.topology.job_subject(env.task, env.priority, env.job_id)
        headers = {"Nats-Msg-Id": item.msg_id}
        with tracing.producer_span(env.task, subject, item.traceparent, headers):
            await self.js.publish(
                subject, env.model_dump_json().encode(), timeout=timeout, headers=headers
            )
        return True

    async def flush(self) -> None:
        """Write the confirmations collected so far (one statement per ledger)."""
        ledgers: tuple[LedgerName, ...] = ("jobs", "messages")
        for ledger in ledgers:
            batch, self._confirmed[ledger] = self._confirmed[ledger], []
            if batch:
                try:
                    await mark_published(self.pool, ledger, batch)
                except Exception as err:
                    # Unconfirmed rows get republished by the relay, de-duplicated by JetStream.
                    log.warning("outbox_confirm_failed", count=len(batch), error=type(err).__name__)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(CONFIRM_INTERVAL_SECONDS)
            await self.flush()


def _means_no_stream(result: object) -> bool:
    return isinstance(
        result, NoRespondersError | NoStreamResponseError | NotFoundError | ServiceUnavailableError
    )


class Unit:
    """One transaction's enqueues; published by the bus after it commits."""

    def __init__(self, conn: asyncpg.Connection, *, max_attempts: int) -> None:
        self.conn = conn
        self.max_attempts = max_attempts
        self.outgoing: list[Outgoing] = []

    def add(self, item: Outgoing | None) -> None:
        if item is not None:
            self.outgoing.append(item)

    async def enqueue_job(
        self,
        task_name: str,
        task_params: BaseModel | dict[str, Any],
        idempotency_key: str | None = None,
        priority: int | None = None,
        *,
        company_id: uuid.UUID | None = None,
        lead_id: uuid.UUID | None = None,
        run_at: datetime | None = None,
    ) -> EnqueuedJob:
        """Record a job in this transaction; with `run_at` in the future it waits in a timer,
        and the scheduler enqueues it when due, under the same key."""
        spec = task_spec(task_name)
        prio = spec.priority if priority is None else priority
        params = job_params(task_params)
        if run_at is not None and run_at > datetime.now(UTC):
            timer_id = await self.conn.fetchval(
                _INSERT_ENQUEUE_TIMER,
                run_at,
                spec.name,
                params,
                prio,
                idempotency_key,
                company_id,
                lead_id,
            )
            return EnqueuedJob(timer_id, spec.name, prio, "scheduled", True)
        new = NewJob(spec.name, params, idempotency_key, prio, company_id, lead_id)
        return (await self.enqueue_jobs([new]))[0]

    async def enqueue_jobs(self, jobs: Sequence[NewJob]) -> list[EnqueuedJob]:
        """Record many jobs in one statement; results follow `jobs`. A job whose idempotency
        key exists is returned as it is (`created` False)."""
        if not jobs:
            return []
        specs = [task_spec(j.task) for j in jobs]
        prios = [
            s.priority if j.priority is None else j.priority
            for s, j in zip(specs, jobs, strict=True)
        ]
        rows = await self.conn.fetch(
            _INSERT_JOBS,
            [j.id for j in jobs],
            [s.name for s in specs],
            [j.params for j in jobs],
            prios,
            [j.idempotency_key for j in jobs],
            [j.company_id for j in jobs],
            [j.lead_id for j in jobs],
            [self.max_attempts] * len(jobs),
            [j.traceparent for j in jobs],
        )
        created = {r["id"]: r for r in rows}
        for r in rows:
            self.outgoing.append(outgoing_from_row("jobs", r))
        missing = [j.idempotency_key for j in jobs if j.id not in created and j.idempotency_key]
        existing = {}
        if missing:
            found = await self.conn.fetch(_EXISTING_JOBS, missing)
            existing = {r["idempotency_key"]: r for r in found}
        out = []
        for job, spec, prio in zip(jobs, specs, prios, strict=True):
            if job.id in created:
                out.append(EnqueuedJob(job.id, spec.name, prio, "queued", True))
            else:
                old = existing.get(job.idempotency_key or "")
                if old is None:  # the key's job committed after our statement's snapshot
                    raise asyncpg.exceptions.SerializationError(
                        f"job with key {job.idempotency_key!r} is being created concurrently"
                    )
                out.append(EnqueuedJob(old["id"], spec.name, old["priority"], old["status"], False))
        return out

    async def request_send(
        self,
        params: SendParams,
        *,
        priority: int,
        job_id: uuid.UUID | None = None,
        message_id: uuid.UUID | None = None,
        along: Along | None = None,
    ) -> tuple[uuid.UUID, bool]:
        """Record an outbound message (status queued) and its send request, with `along`'s
        writes in the same statement. Idempotent by `params.send_key`: returns (message_id,
        created); when not created, `along` wrote nothing."""
        outgoing, existing = await insert_send(
            self.conn, params, priority=priority, job_id=job_id, message_id=message_id, along=along
        )
        if outgoing is None:
            return existing, False
        self.outgoing.append(outgoing)
        return outgoing.envelope.job_id, True


async def insert_send(
    conn: asyncpg.Connection | asyncpg.Pool,
    params: SendParams,
    *,
    priority: int,
    job_id: uuid.UUID | None,
    message_id: uuid.UUID | None,
    along: Along | None,
) -> tuple[Outgoing | None, uuid.UUID]:
    """The send row's insert (one statement); (its Outgoing, id), or (None, the existing id)."""
    message_id = message_id or new_id()
    row = await conn.fetchrow(
        _send_statement(along), *_send_args(params, message_id, priority, job_id, along)
    )
    if row is None:
        existing = await conn.fetchval(
            "SELECT id FROM messages WHERE send_key = $1", params.send_key
        )
        return None, existing
    return outgoing_from_row("messages", row), message_id


@contextlib.asynccontextmanager
async def unit_of_work(
    pool: asyncpg.Pool,
    publisher: Publisher,
    *,
    max_attempts: int,
    conn: asyncpg.Connection | None = None,
    acquire_timeout: float | None = None,
    wait_publish: bool = True,
) -> AsyncIterator[Unit]:
    """Open a transaction, yield a `Unit`, COMMIT, then publish what it enqueued: awaiting
    JetStream's acks, or with `wait_publish=False` leaving the publish running behind."""
    async with contextlib.AsyncExitStack() as stack:
        if conn is None:
            conn = await stack.enter_async_context(pool.acquire(timeout=acquire_timeout))
        elif conn.is_in_transaction():
            raise RuntimeError(
                "a unit of work must own its transaction: publishing before the caller's COMMIT"
                " could announce rows that are then rolled back"
            )
        assert conn is not None
        unit = Unit(conn, max_attempts=max_attempts)
        async with conn.transaction():
            yield unit
        if unit.outgoing:
            if wait_publish:
                await publisher.publish(unit.outgoing)
            else:
                await publisher.publish_behind(unit.outgoing)
