"""The job bus of one process: units of work, enqueueing, replay and queue statistics.

PostgreSQL is the record and JetStream the transport. A job (or send) row is committed first
and published after COMMIT (`shvya_common.bus.outbox`); what a publish could lose, the relay
and the reconciler republish (`shvya_common.bus.relay`). Rows are written only here and in the
ledgers (`shvya_common.bus.ledgers`), the one writer of job and send state.

    async with bus.unit() as unit:            # one transaction
        await unit.enqueue_job("ai.summary", SummaryParams(lead_id=...), "summary:...")
        await unit.request_send(SendParams(...), priority=100)
    # committed, then published
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import BaseModel

from shvya_common.bus.ledgers import Ledger, LedgerName, Outgoing, ledgers_for
from shvya_common.bus.outbox import Along, EnqueuedJob, Publisher, Unit, insert_send, unit_of_work
from shvya_common.bus.topology import TopologyKeeper
from shvya_common.contracts.jobs import SendParams
from shvya_common.contracts.subjects import Topology

log = structlog.get_logger(__name__)

ReplayKind = Literal["all", "jobs", "sends"]


@dataclass(frozen=True)
class QueueStats:
    queued: int
    processing: int
    completed: int
    failed: int
    dlq: int
    total: int
    orphaned: int
    # Outbound sends by status (dispatch.send's ledger is the message row).
    sends: dict[str, int]


@dataclass(frozen=True)
class Replayed:
    ids: list[uuid.UUID]
    jobs: int
    sends: int
    dry_run: bool


class JobBus:
    """Writes and publishes jobs and sends for one process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        nc: NATS,
        js: JetStreamContext,
        topology: Topology,
        *,
        service: str,
        max_attempts: int = 6,
        keeper: TopologyKeeper | None = None,
        bookkeeping: asyncpg.Pool | None = None,
    ) -> None:
        self.pool = pool
        # Claims, lease renewals, completions and publish confirmations; asynchronous commits
        # when the platform opens it (see shvya_common.bus.ledgers).
        self.bookkeeping = bookkeeping or pool
        self.nc = nc
        self.js = js
        self.topology = topology
        self.service = service
        self.max_attempts = max_attempts
        self.keeper = keeper
        self.publisher = Publisher(self.bookkeeping, nc, js, topology, keeper, service=service)
        self.ledgers: dict[LedgerName, Ledger] = ledgers_for(pool, self.bookkeeping)

    def start(self) -> None:
        self.publisher.start()

    async def close(self) -> None:
        await self.publisher.close()

    def unit(
        self,
        conn: asyncpg.Connection | None = None,
        *,
        acquire_timeout: float | None = None,
        wait_publish: bool = True,
    ) -> contextlib.AbstractAsyncContextManager[Unit]:
        """A transaction whose enqueues are published after it commits (see `unit_of_work`)."""
        return unit_of_work(
            self.pool,
            self.publisher,
            max_attempts=self.max_attempts,
            conn=conn,
            acquire_timeout=acquire_timeout,
            wait_publish=wait_publish,
        )

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
        """Record a job in its own unit of work and publish it; see `Unit.enqueue_job`."""
        async with self.unit() as unit:
            return await unit.enqueue_job(
                task_name,
                task_params,
                idempotency_key,
                priority,
                company_id=company_id,
                lead_id=lead_id,
                run_at=run_at,
            )

    async def request_send(
        self,
        params: SendParams,
        *,
        priority: int,
        job_id: uuid.UUID | None = None,
        message_id: uuid.UUID | None = None,
        along: Along | None = None,
    ) -> tuple[uuid.UUID, bool]:
        """A unit of work of one statement: the send row and `along`'s writes, committed by
        themselves (one statement is atomic, so no BEGIN and COMMIT round trips), then
        published. Same contract as `Unit.request_send`."""
        outgoing, existing = await insert_send(
            self.pool, params, priority=priority, job_id=job_id, message_id=message_id, along=along
        )
        if outgoing is None:
            return existing, False
        await self.publisher.publish([outgoing])
        return outgoing.envelope.job_id, True

    async def replay(
        self,
        max_jobs: int,
        *,
        kind: ReplayKind = "all",
        ids: list[uuid.UUID] | None = None,
        task: str | None = None,
        dry_run: bool = False,
    ) -> Replayed:
        """Put up to `max_jobs` dead letters (jobs, sends or both, oldest first) back on the
        queue with attempts reset and a new generation. Rows are taken with SKIP LOCKED, so two
        replays at once never run a dead letter twice; orphans are never replayed."""
        chosen: list[Outgoing] = []
        async with self.unit() as unit:
            for name, ledger in self.ledgers.items():
                if (kind == "jobs" and name != "jobs") or (kind == "sends" and name != "messages"):
                    continue
                room = max_jobs - len(chosen)
                if room <= 0:
                    break
                picked = await ledger.replay(unit.conn, room, ids, task, dry_run)
                chosen.extend(picked)
                if not dry_run:
                    unit.outgoing.extend(picked)
        if chosen and not dry_run:
            log.info("dlq_replayed", count=len(chosen))
        return Replayed(
            ids=[c.envelope.job_id for c in chosen],
            jobs=sum(c.ledger == "jobs" for c in chosen),
            sends=sum(c.ledger == "messages" for c in chosen),
            dry_run=dry_run,
        )

    async def replay_dlq(self, max_jobs: int) -> list[uuid.UUID]:
        """The original's replay: dead-lettered jobs and sends, oldest first."""
        return (await self.replay(max_jobs)).ids

    async def queue_stats(self) -> QueueStats:
        return await queue_stats(self.pool)


async def queue_stats(db: asyncpg.Pool | asyncpg.Connection) -> QueueStats:
    """Jobs by status and sends by status (`GET /queue/stats` and `shvya stats`), from the
    maintained counters (migration 0016): the folded totals plus the deltas not folded yet,
    read in one snapshot, so the figures equal a count of the tables at that moment without
    scanning them."""
    rows = await db.fetch(_COUNTS)
    jobs: dict[str, int] = {}
    sends: dict[str, int] = {}
    for r in rows:
        (jobs if r["ledger"] == "jobs" else sends)[r["status"]] = int(r["n"])
    return QueueStats(
        queued=jobs.get("queued", 0) + jobs.get("scheduled", 0),
        processing=jobs.get("processing", 0),
        completed=jobs.get("completed", 0),
        failed=jobs.get("failed", 0),
        dlq=jobs.get("dlq", 0),
        total=sum(n for status, n in jobs.items() if status != "orphaned"),
        orphaned=jobs.get("orphaned", 0),
        sends={status: n for status, n in sends.items() if n},
    )


_COUNTS = """
SELECT ledger, status, sum(n) AS n FROM (
    SELECT ledger, status, n FROM queue_counts
    UNION ALL
    SELECT ledger, status, n FROM queue_count_deltas
) c GROUP BY ledger, status
"""


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
