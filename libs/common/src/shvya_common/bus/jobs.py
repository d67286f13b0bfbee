"""Enqueueing, deferring, replaying and counting jobs.

A job is written to the jobs table and published to JetStream inside one database transaction:
the row commits only after JetStream has acknowledged the publish. So a committed job is always
in JetStream (or parked in a timer), and a failed publish leaves nothing behind. A worker that
receives a job before that commit waits on the row's lock (see `worker.claim`).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from nats.js import JetStreamContext
from pydantic import BaseModel

from shvya_common.contracts.jobs import JobEnvelope, SendParams, task_spec
from shvya_common.contracts.subjects import Topology
from shvya_common.metrics import JOBS_ENQUEUED

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_SECONDS = 5.0

_INSERT_JOB = """
INSERT INTO jobs (id, task_name, task_params, priority, idempotency_key, company_id, lead_id,
                  max_attempts, status, run_after)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""

_EXISTING_JOB = "SELECT id, status, priority FROM jobs WHERE idempotency_key = $1"

_INSERT_ENQUEUE_TIMER = """
INSERT INTO timers (kind, due_at, task_name, task_params, priority, idempotency_key,
                    company_id, lead_id, reason)
VALUES ('enqueue', $1, $2, $3, $4, $5, $6, $7, 'run_at')
"""


@dataclass(frozen=True)
class EnqueuedJob:
    """The job an enqueue call refers to; `created` is False when the idempotency key matched."""

    id: uuid.UUID
    task_name: str
    priority: int
    status: str
    created: bool


@dataclass(frozen=True)
class QueueStats:
    queued: int
    processing: int
    completed: int
    failed: int
    dlq: int
    total: int


def job_params(params: BaseModel | dict[str, Any]) -> dict[str, Any]:
    if isinstance(params, BaseModel):
        return params.model_dump(mode="json")
    return dict(params)


class JobBus:
    """Publishes jobs and keeps the jobs table in step; one per process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        topology: Topology,
        *,
        service: str,
        max_attempts: int = 6,
    ) -> None:
        self.pool = pool
        self.js = js
        self.topology = topology
        self.service = service
        self.max_attempts = max_attempts

    async def publish(self, envelope: JobEnvelope, msg_id: str) -> None:
        """Publish one envelope and wait for JetStream's ack; `msg_id` de-duplicates retries."""
        await self.js.publish(
            self.topology.job_subject(envelope.task, envelope.priority),
            envelope.model_dump_json().encode(),
            timeout=PUBLISH_TIMEOUT_SECONDS,
            headers={"Nats-Msg-Id": msg_id},
        )
        JOBS_ENQUEUED.labels(self.service, envelope.task).inc()

    async def enqueue_job(
        self,
        task_name: str,
        task_params: BaseModel | dict[str, Any],
        idempotency_key: str | None = None,
        priority: int | None = None,
        *,
        conn: asyncpg.Connection | None = None,
        company_id: uuid.UUID | None = None,
        lead_id: uuid.UUID | None = None,
        run_at: datetime | None = None,
    ) -> EnqueuedJob:
        """Record and publish a job; with `conn`, inside the caller's open transaction.

        A job whose idempotency key already exists is returned as it is, not enqueued again.
        With `run_at` in the future the job is parked in a timer for the scheduler to publish.
        """
        spec = task_spec(task_name)
        prio = spec.priority if priority is None else priority
        params = job_params(task_params)
        if conn is None:
            async with self.pool.acquire() as own, own.transaction():
                return await self._enqueue(
                    own, spec.name, params, idempotency_key, prio, company_id, lead_id, run_at
                )
        return await self._enqueue(
            conn, spec.name, params, idempotency_key, prio, company_id, lead_id, run_at
        )

    async def _enqueue(
        self,
        conn: asyncpg.Connection,
        task: str,
        params: dict[str, Any],
        key: str | None,
        priority: int,
        company_id: uuid.UUID | None,
        lead_id: uuid.UUID | None,
        run_at: datetime | None,
    ) -> EnqueuedJob:
        if run_at is not None and run_at > datetime.now(UTC):
            # Not a job yet: the scheduler enqueues it when due, under the same key.
            timer_id = await conn.fetchval(
                _INSERT_ENQUEUE_TIMER + " RETURNING id",
                run_at,
                task,
                params,
                priority,
                key,
                company_id,
                lead_id,
            )
            return EnqueuedJob(timer_id, task, priority, "scheduled", True)
        job_id = uuid.uuid4()
        row = await conn.fetchrow(
            _INSERT_JOB,
            job_id,
            task,
            params,
            priority,
            key,
            company_id,
            lead_id,
            self.max_attempts,
            "queued",
            None,
        )
        if row is None:
            existing = await conn.fetchrow(_EXISTING_JOB, key)
            assert existing is not None
            return EnqueuedJob(
                existing["id"], task, existing["priority"], existing["status"], False
            )
        else:
            envelope = JobEnvelope(
                job_id=job_id,
                task=task,
                priority=priority,
                params=params,
                company_id=company_id,
                lead_id=lead_id,
                enqueued_at=datetime.now(UTC),
            )
            await self.publish(envelope, str(job_id))
        return EnqueuedJob(job_id, task, priority, "queued", True)

    async def request_send(
        self,
        conn: asyncpg.Connection,
        params: SendParams,
        *,
        priority: int,
        job_id: uuid.UUID | None = None,
    ) -> tuple[uuid.UUID, bool]:
        """Record an outbound message (status queued) and publish its send request, inside the
        caller's transaction. Idempotent by `params.send_key`: returns (message_id, created)."""
        message_id = uuid.uuid4()
        meta: dict[str, Any] = {"purpose": params.purpose}
        if params.ai is not None:
            meta["ai"] = params.ai.model_dump(mode="json")
        row = await conn.fetchrow(
            """
            INSERT INTO messages (id, company_id, lead_id, direction, channel, body, status,
                                  send_key, job_id, reply_to_id, recipient, priority, meta)
            VALUES ($1, $2, $3, 'outbound', $4, $5, 'queued', $6, $7, $8, $9, $10, $11)
            ON CONFLICT (send_key) DO NOTHING
            RETURNING id
            """,
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
        )
        if row is None:
            existing = await conn.fetchval(
                "SELECT id FROM messages WHERE send_key = $1", params.send_key
            )
            return existing, False
        envelope = JobEnvelope(
            job_id=message_id,
            task="dispatch.send",
            priority=priority,
            params=params.model_dump(mode="json"),
            company_id=params.company_id,
            lead_id=params.lead_id,
            enqueued_at=datetime.now(UTC),
        )
        await self.publish(envelope, str(message_id))
        return message_id, True

    async def replay_dlq(self, max_jobs: int) -> list[uuid.UUID]:
        """Put up to `max_jobs` dead letters back on the queue, attempts reset.

        Rows are locked with SKIP LOCKED and leave status dlq in the same transaction as their
        publish, so replaying the same jobs twice (or from two callers at once) runs them once.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                UPDATE jobs SET status = 'queued', attempts = 0, replays = replays + 1,
                       last_error = NULL, completed_at = NULL, updated_at = now()
                WHERE id IN (SELECT id FROM jobs WHERE status = 'dlq'
                             ORDER BY updated_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
                RETURNING id, task_name, task_params, priority, company_id, lead_id, replays
                """,
                max_jobs,
            )
            now = datetime.now(UTC)
            await asyncio.gather(
                *(
                    self.publish(
                        JobEnvelope(
                            job_id=r["id"],
                            task=r["task_name"],
                            priority=r["priority"],
                            params=r["task_params"],
                            company_id=r["company_id"],
                            lead_id=r["lead_id"],
                            enqueued_at=now,
                        ),
                        f"{r['id']}:replay:{r['replays']}",
                    )
                    for r in rows
                )
            )
        ids = [r["id"] for r in rows]
        if ids:
            log.info("dlq_replayed", count=len(ids))
        return ids

    async def queue_stats(self) -> QueueStats:
        row = await self.pool.fetchrow(
            """
            SELECT count(*) FILTER (WHERE status IN ('queued', 'scheduled')) AS queued,
                   count(*) FILTER (WHERE status = 'processing') AS processing,
                   count(*) FILTER (WHERE status = 'completed') AS completed,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'dlq') AS dlq,
                   count(*) AS total
            FROM jobs
            """
        )
        assert row is not None
        return QueueStats(**dict(row))


_default_bus: JobBus | None = None


def install_bus(bus: JobBus | None) -> None:
    """Make `bus` the one that the module-level `enqueue_job` uses in this process."""
    global _default_bus
    _default_bus = bus


async def enqueue_job(
    task_name: str,
    task_params: BaseModel | dict[str, Any],
    idempotency_key: str | None = None,
    priority: int | None = None,
    **kwargs: Any,
) -> EnqueuedJob:
    """The original's `enqueue_job(task_name, task_params, idempotency_key, priority)`, async."""
    if _default_bus is None:
        raise RuntimeError("no job bus installed in this process; call install_bus() at start-up")
    return await _default_bus.enqueue_job(
        task_name, task_params, idempotency_key, priority, **kwargs
    )
