"""Where a job's state is recorded: the jobs table, or for a send its outbound message row. The
bus is the only writer of either status column (see `shvya_common.contracts.states`).

Every write is fenced: it names the statuses it may move from and the attempt that owns the
row, and says whether it moved anything. A run whose lease expired (its worker was partitioned
or stopped) and was overtaken by a newer one can therefore never overwrite the newer run's
outcome, and a terminal status is never left except by the moves the state table allows.

A claim counts the attempt in the row, not in JetStream: a delivery that could not be claimed
because the database was down is not an attempt, and a lease (renewed by the worker's heartbeat)
makes a second delivery of a job that is still running wait instead of running it again.

Claims, lease renewals and completions go through the `bookkeeping` pool, which the platform
opens with asynchronous commits (`shvya_common.db.create_pool`): they record progress that a
crash of PostgreSQL may take back, and taking it back is harmless. A lost claim or renewal
leaves the row claimable (the lease it took is gone with it); a lost completion leaves the row
`processing` with a lease that runs out, so the reconciler runs the job again, and what the run
wrote with a synchronous commit (a reply's send row by its send key, a send's outcome) makes the
rerun find the work done. Everything a customer or another system sees waits on a synchronous
commit first: ingest files with one before it answers, dispatch commits `sending` with one
before it calls a provider, and a synchronous commit flushes every commit before it, of any
connection. So a job whose progress was lost may run twice; a message is still sent at most
once and nothing accepted is lost.

Each ledger also knows how to find its rows for the outbox: rows whose publish JetStream has not
confirmed (the relay), rows stuck past a horizon (the reconciler), parked rows a timer puts back,
and dead letters an operator replays. `envelope_from_row` is the one place a job's message is
built from its row.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, TypeAlias, TypeVar

import asyncpg

from shvya_common.contracts.events import EventType
from shvya_common.contracts.jobs import JobEnvelope
from shvya_common.contracts.states import (
    JOB_LIVE,
    SEND_LIVE,
    JobStatus,
    SendStatus,
    job_sources,
    send_sources,
)
from shvya_common.db import is_outage
from shvya_common.events import record_event
from shvya_common.metrics import SENDS

LedgerName = Literal["jobs", "messages"]
Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool
# (updated_at, id) of the last row a reconciler page saw.
Cursor: TypeAlias = tuple[datetime, uuid.UUID]

_J, _S = JobStatus, SendStatus

_RESUME_TIMER = """
INSERT INTO timers (kind, due_at, ledger, target_id, company_id, lead_id, reason)
VALUES ('resume', $1, $2, $3, $4, $5, $6)
"""


@dataclass(frozen=True)
class Claim:
    """What a delivery may do with its row.

    run: the row is ours for `attempt`; finished: the row is done (or parked), drop the
    message; busy: a live run holds the lease, come back in `retry_in` seconds; orphan: there is
    no row; exhausted: every attempt is spent without an outcome (the worker died each time).
    """

    action: Literal["run", "finished", "busy", "orphan", "exhausted"]
    attempt: int = 0
    prior_status: str | None = None
    retry_in: float = 0.0


@dataclass(frozen=True)
class Outgoing:
    """A committed row to publish: which ledger it is in, and its message."""

    ledger: LedgerName
    envelope: JobEnvelope
    # The trace context the row was enqueued in; its publishes continue that trace.
    traceparent: str | None = None

    @property
    def msg_id(self) -> str:
        return f"{self.envelope.job_id}:{self.envelope.generation}"


def envelope_from_row(ledger: LedgerName, row: asyncpg.Record | dict[str, Any]) -> JobEnvelope:
    """The message for a job row (`JOB_COLUMNS`) or a send row (`SEND_COLUMNS`)."""
    if ledger == "jobs":
        task, params = row["task_name"], row["task_params"]
    else:
        task, params = "dispatch.send", row["send_params"]
    return JobEnvelope(
        job_id=row["id"],
        task=task,
        priority=row["priority"],
        params=params or {},
        company_id=row["company_id"],
        lead_id=row["lead_id"],
        generation=row["generation"],
        enqueued_at=row["updated_at"],
    )


def outgoing_from_row(ledger: LedgerName, row: asyncpg.Record | dict[str, Any]) -> Outgoing:
    """The row to publish, with the trace context stored with it."""
    return Outgoing(ledger, envelope_from_row(ledger, row), row.get("traceparent"))


JOB_COLUMNS = (
    "id, task_name, task_params, priority, company_id, lead_id, generation, updated_at, traceparent"
)
SEND_COLUMNS = "id, send_params, priority, company_id, lead_id, generation, updated_at, traceparent"


class Ledger(Protocol):
    name: LedgerName
    columns: str

    async def claim(
        self, env: JobEnvelope, *, max_attempts: int, lease: float, worker: str
    ) -> Claim: ...
    async def claim_many(
        self, wanted: list[tuple[JobEnvelope, int]], *, lease: float, worker: str
    ) -> list[Claim]: ...
    async def complete(
        self, env: JobEnvelope, attempt: int, result: dict[str, Any] | None
    ) -> bool: ...
    async def complete_many(
        self, done: list[tuple[JobEnvelope, int, dict[str, Any] | None]]
    ) -> list[bool]: ...
    async def retry(
        self, env: JobEnvelope, attempt: int, error: str, run_after: datetime
    ) -> bool: ...
    async def dead(self, env: JobEnvelope, attempt: int, error: str) -> bool: ...
    async def defer(self, env: JobEnvelope, attempt: int, until: datetime, reason: str) -> bool: ...
    async def release(self, env: JobEnvelope, attempt: int) -> bool: ...
    async def renew(self, held: list[tuple[uuid.UUID, int]], lease: float) -> None: ...
    async def requeue(self, conn: asyncpg.Connection, row_id: uuid.UUID) -> Outgoing | None: ...
    async def replay(
        self,
        conn: asyncpg.Connection,
        limit: int,
        ids: list[uuid.UUID] | None,
        task: str | None,
        dry_run: bool,
    ) -> list[Outgoing]: ...
    async def unpublished(
        self, conn: asyncpg.Connection, grace: float, limit: int
    ) -> list[Outgoing]: ...
    async def mark_published(self, conn: Executor, items: list[Outgoing]) -> None: ...
    async def stale(
        self, pool: asyncpg.Pool, horizon: float, after: Cursor | None, limit: int
    ) -> list[asyncpg.Record]: ...
    async def bump(self, pool: asyncpg.Pool, row: asyncpg.Record) -> Outgoing | None: ...


async def _orphan(pool: asyncpg.Pool, env: JobEnvelope, reason: str) -> None:
    """Keep a message that has no row as an `orphaned` job: visible, never run or replayed."""
    await pool.execute(
        "INSERT INTO jobs (id, task_name, task_params, priority, status, last_error, result,"
        " completed_at) VALUES ($1, $2, $3, $4, 'orphaned', $5, $6, now())"
        " ON CONFLICT (id) DO NOTHING",
        env.job_id,
        env.task,
        env.params,
        env.priority,
        reason,
        {"company_id": str(env.company_id or ""), "lead_id": str(env.lead_id or "")},
    )


OUTAGE_RETRY_SECONDS = 600.0
T = TypeVar("T")


def is_database_outage(err: BaseException) -> bool:
    """PostgreSQL unreachable or refusing service (not a bad statement)."""
    if isinstance(err, asyncpg.PostgresError):
        return is_outage(err)
    return isinstance(err, asyncpg.InterfaceError | asyncpg.InternalClientError | OSError)


async def outlast_outage(
    write: Callable[[], Awaitable[T]], *, seconds: float = OUTAGE_RETRY_SECONDS
) -> T:
    """Run a state write, retrying while the database is unreachable: the outcome of a send
    that left must be recorded, not lost to an outage (the job stays in hand meanwhile)."""
    delay = 0.2
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await write()
        except Exception as err:
            if not is_database_outage(err) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _remaining(record: asyncpg.Record) -> float:
    return max(float(record["remaining"] or 0.0), 0.0)


# How soon to look again at a row whose claim lost a race with its own lease running out: the
# claim saw a live lease, the state read a moment later saw it lapsed.
LAPSED_RETRY_SECONDS = 0.1


def _claims(
    wanted: list[tuple[JobEnvelope, int]],
    claimed: dict[uuid.UUID, asyncpg.Record],
    states: dict[uuid.UUID, asyncpg.Record],
    sources: Collection[str],
    prior: Callable[[asyncpg.Record], str | None],
    lease: float,
    resumable: str | None = None,
) -> tuple[list[Claim], list[JobEnvelope]]:
    """Each delivery's Claim, and the envelopes that have no row (orphans to record). A job
    asked for twice in one batch runs once: the second copy is told it is busy. A row that
    was not claimed although its lease has lapsed lost a race with the lease running out (the
    claim saw it live, the state read a moment later saw it lapsed): with attempts left (or in
    the `resumable` status, a send that may have left) it is to be tried again, not exhausted."""
    out: list[Claim] = []
    orphans: list[JobEnvelope] = []
    seen: set[uuid.UUID] = set()
    for env, max_attempts in wanted:
        job_id = env.job_id
        if job_id in seen:
            out.append(Claim("busy", retry_in=lease))
            continue
        seen.add(job_id)
        if job_id in claimed:
            row = claimed[job_id]
            out.append(Claim("run", row["attempts"], prior(row)))
            continue
        state = states.get(job_id)
        if state is None:
            orphans.append(env)
            out.append(Claim("orphan"))
        elif state["status"] not in sources:
            out.append(Claim("finished", state["attempts"], state["status"]))
        elif _remaining(state) > 0:
            out.append(Claim("busy", state["attempts"], state["status"], _remaining(state)))
        elif state["attempts"] < max_attempts or state["status"] == resumable:
            out.append(Claim("busy", state["attempts"], state["status"], LAPSED_RETRY_SECONDS))
        else:
            out.append(Claim("exhausted", state["attempts"], state["status"]))
    return out, orphans


class JobLedger:
    """State in `jobs`: queued → processing → completed | failed (retry) | dlq | scheduled."""

    name: LedgerName = "jobs"
    columns = JOB_COLUMNS

    # Rows are locked in id order first, so two multi-row writes of one worker (a claim batch,
    # the heartbeat's renewal, a completion batch) never wait on each other in a cycle.
    # As for sends (see SendLedger._CLAIM): each row looked up by its id alone and locked, in
    # id order, then tested, so no status index is taken for a multi-row write.
    _CLAIM = """
    WITH want AS (
        SELECT * FROM unnest($1::uuid[], $2::int[]) AS w(id, max_attempts) ORDER BY id
    ), locked AS (
        SELECT j.id, want.max_attempts FROM want CROSS JOIN LATERAL (
            SELECT id, status, attempts, lease_until FROM jobs
             WHERE id = want.id LIMIT 1 FOR UPDATE) j
         WHERE j.status = ANY($5::text[]) AND j.attempts < want.max_attempts
           AND (j.lease_until IS NULL OR j.lease_until <= now())
    )
    UPDATE jobs SET status = 'processing', attempts = jobs.attempts + 1,
           max_attempts = locked.max_attempts, started_at = now(), updated_at = now(),
           claimed_by = $4, lease_until = now() + make_interval(secs => $3::float8),
           published_at = coalesce(jobs.published_at, now())
      FROM locked WHERE jobs.id = locked.id
    RETURNING jobs.id, jobs.attempts
    """
    _COMPLETE = """
    WITH c AS (
        SELECT * FROM unnest($1::uuid[], $2::int[], $3::jsonb[]) AS c(id, attempts, result)
        ORDER BY id
    ), locked AS (
        SELECT j.id, c.result FROM c CROSS JOIN LATERAL (
            SELECT id, status, attempts FROM jobs WHERE id = c.id LIMIT 1 FOR UPDATE) j
         WHERE j.attempts = c.attempts AND j.status = 'processing'
    )
    UPDATE jobs SET status = 'completed', completed_at = now(), last_error = NULL,
           result = locked.result, lease_until = NULL, updated_at = now()
      FROM locked WHERE jobs.id = locked.id
    RETURNING jobs.id
    """
    _RENEW = """
    WITH h AS (SELECT * FROM unnest($1::uuid[], $2::int[]) AS h(id, attempts) ORDER BY id),
    locked AS (
        SELECT j.id FROM h CROSS JOIN LATERAL (
            SELECT id, status, attempts FROM jobs WHERE id = h.id LIMIT 1 FOR UPDATE) j
         WHERE j.attempts = h.attempts AND j.status = 'processing'
    )
    UPDATE jobs SET lease_until = now() + make_interval(secs => $3::float8)
      FROM locked WHERE jobs.id = locked.id
    """
    _STATE = """
    SELECT id, status, attempts, extract(epoch FROM lease_until - now()) AS remaining
    FROM jobs WHERE id = ANY($1::uuid[])
    """

    def __init__(self, pool: asyncpg.Pool, bookkeeping: asyncpg.Pool | None = None) -> None:
        self.pool = pool
        self.bookkeeping = bookkeeping or pool

    async def claim(
        self, env: JobEnvelope, *, max_attempts: int, lease: float, worker: str
    ) -> Claim:
        return (await self.claim_many([(env, max_attempts)], lease=lease, worker=worker))[0]

    async def claim_many(
        self, wanted: list[tuple[JobEnvelope, int]], *, lease: float, worker: str
    ) -> list[Claim]:
        """Claim many deliveries in one statement (a second one only for those not claimed)."""
        sources = job_sources(_J.PROCESSING)
        ids = [env.job_id for env, _ in wanted]
        rows = await self.bookkeeping.fetch(
            self._CLAIM, ids, [m for _, m in wanted], lease, worker, sources
        )
        claimed = {r["id"]: r for r in rows}
        missing = [i for i in dict.fromkeys(ids) if i not in claimed]
        states = (
            {r["id"]: r for r in await self.pool.fetch(self._STATE, missing)} if missing else {}
        )
        out, orphans = _claims(wanted, claimed, states, sources, lambda _: None, lease)
        for env in orphans:
            await _orphan(self.pool, env, "orphan: a message for a job that has no row")
        return out

    async def _move(self, sql: str, *args: Any) -> bool:
        return await self.pool.fetchval(sql, *args) is not None

    async def complete(self, env: JobEnvelope, attempt: int, result: dict[str, Any] | None) -> bool:
        return (await self.complete_many([(env, attempt, result)]))[0]

    async def complete_many(
        self, done: list[tuple[JobEnvelope, int, dict[str, Any] | None]]
    ) -> list[bool]:
        """Complete many runs in one statement; each True if its run still owned the row."""
        ids = [env.job_id for env, _, _ in done]
        rows = await self.bookkeeping.fetch(
            self._COMPLETE,
            ids,
            [attempt for _, attempt, _ in done],
            [result for _, _, result in done],
        )
        moved = {r["id"] for r in rows}
        return [env.job_id in moved for env, _, _ in done]

    async def retry(self, env: JobEnvelope, attempt: int, error: str, run_after: datetime) -> bool:
        return await self._move(
            "UPDATE jobs SET status = 'failed', last_error = $3, run_after = $4,"
            " lease_until = NULL, updated_at = now()"
            " WHERE id = $1 AND attempts = $2 AND status = 'processing' RETURNING id",
            env.job_id,
            attempt,
            error,
            run_after,
        )

    async def dead(self, env: JobEnvelope, attempt: int, error: str) -> bool:
        return await self._move(
            "UPDATE jobs SET status = 'dlq', last_error = $3, completed_at = now(),"
            " lease_until = NULL, updated_at = now()"
            " WHERE id = $1 AND attempts = $2 AND status = ANY($4::text[]) RETURNING id",
            env.job_id,
            attempt,
            error,
            job_sources(_J.DLQ),
        )

    async def defer(self, env: JobEnvelope, attempt: int, until: datetime, reason: str) -> bool:
        """Park the job in a timer; the deferral gives its attempt back."""
        async with self.pool.acquire() as conn, conn.transaction():
            moved = await conn.fetchval(
                "UPDATE jobs SET status = 'scheduled', run_after = $3, attempts = attempts - 1,"
                " lease_until = NULL, updated_at = now()"
                " WHERE id = $1 AND attempts = $2 AND status = 'processing' RETURNING id",
                env.job_id,
                attempt,
                until,
            )
            if moved is None:
                return False
            await conn.execute(
                _RESUME_TIMER, until, "jobs", env.job_id, env.company_id, env.lead_id, reason[:500]
            )
        return True

    async def release(self, env: JobEnvelope, attempt: int) -> bool:
        """An outage, not the job, ended this attempt: give it back and requeue the row."""
        return await self._move(
            "UPDATE jobs SET status = 'queued', attempts = attempts - 1, lease_until = NULL,"
            " updated_at = now()"
            " WHERE id = $1 AND attempts = $2 AND status = 'processing' RETURNING id",
            env.job_id,
            attempt,
        )

    async def renew(self, held: list[tuple[uuid.UUID, int]], lease: float) -> None:
        if held:
            await self.bookkeeping.execute(
                self._RENEW,
                [h[0] for h in held],
                [h[1] for h in held],
                lease,
            )

    async def requeue(self, conn: asyncpg.Connection, row_id: uuid.UUID) -> Outgoing | None:
        row = await conn.fetchrow(
            "UPDATE jobs SET status = 'queued', generation = generation + 1, published_at = NULL,"
            f" updated_at = now() WHERE id = $1 AND status = 'scheduled' RETURNING {JOB_COLUMNS}",
            row_id,
        )
        return outgoing_from_row("jobs", row) if row is not None else None

    async def replay(
        self,
        conn: asyncpg.Connection,
        limit: int,
        ids: list[uuid.UUID] | None,
        task: str | None,
        dry_run: bool,
    ) -> list[Outgoing]:
        pick = (
            "SELECT id FROM jobs WHERE status = 'dlq'"
            " AND ($2::uuid[] IS NULL OR id = ANY($2::uuid[]))"
            " AND ($3::text IS NULL OR task_name = $3)"
            " ORDER BY updated_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"
        )
        if dry_run:
            rows = await conn.fetch(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({pick})", limit, ids, task
            )
        else:
            rows = await conn.fetch(
                "UPDATE jobs SET status = 'queued', attempts = 0, replays = replays + 1,"
                " generation = generation + 1, published_at = NULL, last_error = NULL,"
                " completed_at = NULL, lease_until = NULL, updated_at = now()"
                f" WHERE id IN ({pick}) RETURNING {JOB_COLUMNS}",
                limit,
                ids,
                task,
            )
        return [outgoing_from_row("jobs", r) for r in rows]

    async def unpublished(
        self, conn: asyncpg.Connection, grace: float, limit: int
    ) -> list[Outgoing]:
        rows = await conn.fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'queued' AND published_at IS NULL"
            " AND updated_at <= now() - make_interval(secs => $1::float8)"
            " ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            grace,
            limit,
        )
        return [outgoing_from_row("jobs", r) for r in rows]

    async def mark_published(
        self, conn: asyncpg.Connection | asyncpg.Pool, items: list[Outgoing]
    ) -> None:
        await mark_published(conn, "jobs", items)

    async def stale(
        self,
        conn: asyncpg.Pool,
        horizon: float,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        return await _stale(conn, "jobs", JOB_COLUMNS, sorted(JOB_LIVE), horizon, after, limit)

    async def bump(self, pool: asyncpg.Pool, row: asyncpg.Record) -> Outgoing | None:
        return await _bump(pool, "jobs", JOB_COLUMNS, row)


async def mark_published(conn: Executor, table: LedgerName, items: list[Outgoing]) -> None:
    """Record that JetStream confirmed these (id, generation) publishes.

    A row another transaction holds is skipped, not waited for: a worker's claim locks its
    rows in id order and sets `published_at` itself, and this statement, locking a batch of
    rows in the order they were confirmed, deadlocked with claims (PostgreSQL then waits
    `deadlock_timeout`, a second, before cancelling one of them). A row skipped and left
    unconfirmed is at worst republished by the relay, which JetStream de-duplicates."""
    if not items:
        return
    await conn.execute(
        f"""
        WITH locked AS (
            SELECT t.id FROM unnest($1::uuid[], $2::int[]) AS p(id, generation)
            CROSS JOIN LATERAL (
                SELECT id FROM {table}
                 WHERE id = p.id AND generation = p.generation AND published_at IS NULL
                 LIMIT 1 FOR UPDATE SKIP LOCKED) t
        )
        UPDATE {table} SET published_at = now() FROM locked WHERE {table}.id = locked.id
        """,
        [i.envelope.job_id for i in items],
        [i.envelope.generation for i in items],
    )


async def _stale(
    pool: asyncpg.Pool,
    table: LedgerName,
    columns: str,
    live: list[str],
    horizon: float,
    after: Cursor | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Rows in a live status, untouched for `horizon` and with no live lease, in (updated_at,
    id) order after `after`. Unconfirmed rows are included: the relay republishes only
    `queued` ones, so a `failed`, `processing`, `retrying` or `sending` row whose republish
    after a bump did not go out (NATS down again) is this pass's to try again."""
    outbound = "AND direction = 'outbound'" if table == "messages" else ""
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {columns}, status FROM {table}"
        f" WHERE status = ANY($1::text[]) {outbound}"
        " AND updated_at <= now() - make_interval(secs => $2::float8)"
        " AND (lease_until IS NULL OR lease_until <= now())"
        " AND ($3::timestamptz IS NULL OR (updated_at, id) > ($3::timestamptz, $4::uuid))"
        " ORDER BY updated_at, id LIMIT $5",
        live,
        horizon,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return rows


async def _bump(
    pool: asyncpg.Pool, table: LedgerName, columns: str, row: asyncpg.Record
) -> Outgoing | None:
    """Give a row whose message is gone a new generation, if nobody touched it meanwhile."""
    fresh = await pool.fetchrow(
        f"UPDATE {table} SET generation = generation + 1, published_at = NULL, updated_at = now()"
        " WHERE id = $1 AND generation = $2 AND status = $3 AND updated_at = $4"
        " AND (lease_until IS NULL OR lease_until <= now())"
        f" RETURNING {columns}",
        row["id"],
        row["generation"],
        row["status"],
        row["updated_at"],
    )
    return outgoing_from_row(table, fresh) if fresh is not None else None


class SendLedger:
    """State on the outbound message: queued → sending → sent | logged | unknown, or retrying,
    scheduled, suppressed, held, dlq.

    'sending' is written and committed before the provider is called, so a later delivery that
    finds it (with the lease expired) knows the send may have left and must not repeat it.
    """

    name: LedgerName = "messages"
    columns = SEND_COLUMNS

    # Each wanted row is looked up by its id alone and locked, in id order; whether it may be
    # claimed is decided on the locked row, and the UPDATE joins on those ids. With the status
    # test beside the id the planner could take the status index, and when the statistics say
    # hardly any send is queued (taken before a backlog built up) it did, even per id: every
    # claim then read the whole backlog.
    _CLAIM = """
    WITH want AS (
        SELECT * FROM unnest($1::uuid[], $2::int[]) AS w(id, max_attempts) ORDER BY id
    ), locked AS (
        SELECT m.id FROM want CROSS JOIN LATERAL (
            SELECT id, direction, status, attempts, lease_until FROM messages
             WHERE id = want.id LIMIT 1 FOR UPDATE) m
         WHERE m.direction = 'outbound' AND m.status = ANY($4::text[])
           AND (m.attempts < want.max_attempts OR m.status = 'sending')
           AND (m.lease_until IS NULL OR m.lease_until <= now())
    )
    UPDATE messages SET attempts = messages.attempts + 1, updated_at = now(),
           lease_until = now() + make_interval(secs => $3::float8),
           published_at = coalesce(messages.published_at, now())
      FROM locked WHERE messages.id = locked.id
    RETURNING messages.id, messages.attempts, messages.status
    """
    _RENEW = """
    WITH h AS (SELECT * FROM unnest($1::uuid[], $2::int[]) AS h(id, attempts) ORDER BY id),
    locked AS (
        SELECT m.id FROM h CROSS JOIN LATERAL (
            SELECT id, status, attempts FROM messages WHERE id = h.id LIMIT 1 FOR UPDATE) m
         WHERE m.attempts = h.attempts AND m.status = ANY($4::text[])
    )
    UPDATE messages SET lease_until = now() + make_interval(secs => $3::float8)
      FROM locked WHERE messages.id = locked.id
    """
    _STATE = """
    SELECT id, status, attempts, extract(epoch FROM lease_until - now()) AS remaining
    FROM messages WHERE id = ANY($1::uuid[]) AND direction = 'outbound'
    """
    # Frees the lease of runs that ended without an outcome of their own. By id, as the claim:
    # joined to the ids as a table, it was planned (an unnest is guessed at 100 rows) as a
    # sequential scan of every message with a hash join, the costliest statement of the
    # end-to-end row.
    _RELEASE = """
    WITH c AS (SELECT * FROM unnest($1::uuid[], $2::int[]) AS c(id, attempts) ORDER BY id),
    locked AS (
        SELECT m.id FROM c CROSS JOIN LATERAL (
            SELECT id, attempts, lease_until FROM messages WHERE id = c.id LIMIT 1 FOR UPDATE) m
         WHERE m.lease_until IS NOT NULL AND m.attempts = c.attempts
    )
    UPDATE messages SET lease_until = NULL FROM locked WHERE messages.id = locked.id
    """
    # Parks a send and gives the reason of its previous deferral: RETURNING sees only the new
    # meta, so the old is read in the same statement, under the row's lock (FOR UPDATE re-checks
    # the fence on the row's latest version).
    _DEFER = """
    WITH prior AS (
        SELECT id, meta->>'deferred_reason' AS reason FROM messages
         WHERE id = $1 AND attempts = $2 AND status = ANY($5::text[]) FOR UPDATE
    )
    UPDATE messages SET status = 'scheduled', attempts = attempts - 1, lease_until = NULL,
           updated_at = now(),
           meta = meta || jsonb_build_object('deferred_until', $3::text,
                                             'deferred_reason', $4::text)
      FROM prior WHERE messages.id = prior.id
    RETURNING messages.company_id, messages.lead_id, messages.channel,
              prior.reason AS prior_reason
    """

    def __init__(self, pool: asyncpg.Pool, bookkeeping: asyncpg.Pool | None = None) -> None:
        self.pool = pool
        self.bookkeeping = bookkeeping or pool

    async def claim(
        self, env: JobEnvelope, *, max_attempts: int, lease: float, worker: str
    ) -> Claim:
        return (await self.claim_many([(env, max_attempts)], lease=lease, worker=worker))[0]

    async def claim_many(
        self, wanted: list[tuple[JobEnvelope, int]], *, lease: float, worker: str
    ) -> list[Claim]:
        live = sorted(SEND_LIVE)
        ids = [env.job_id for env, _ in wanted]
        rows = await self.bookkeeping.fetch(self._CLAIM, ids, [m for _, m in wanted], lease, live)
        claimed = {r["id"]: r for r in rows}
        missing = [i for i in dict.fromkeys(ids) if i not in claimed]
        states = (
            {r["id"]: r for r in await self.pool.fetch(self._STATE, missing)} if missing else {}
        )
        out, orphans = _claims(
            wanted, claimed, states, live, lambda r: r["status"], lease, resumable="sending"
        )
        for env in orphans:
            await _orphan(self.pool, env, "orphan: a send request whose message has no row")
        return out

    async def _move(self, sql: str, *args: Any) -> bool:
        return await self.pool.fetchval(sql, *args) is not None

    async def complete(self, env: JobEnvelope, attempt: int, result: dict[str, Any] | None) -> bool:
        return (await self.complete_many([(env, attempt, result)]))[0]

    async def complete_many(
        self, done: list[tuple[JobEnvelope, int, dict[str, Any] | None]]
    ) -> list[bool]:
        # The handler recorded the send's own outcome (sent, suppressed, ...), which freed the
        # lease with it; a run that ended without one (not pending) frees it here.
        await self.bookkeeping.execute(
            self._RELEASE,
            [env.job_id for env, _, _ in done],
            [attempt for _, attempt, _ in done],
        )
        return [True] * len(done)

    # A send's attempt that ends in a retry or a dead letter ends here, not in the handler (the
    # worker decides which from the error): `shvya_sends_total` counts it once the row moved.
    async def retry(self, env: JobEnvelope, attempt: int, error: str, run_after: datetime) -> bool:
        channel = await self.pool.fetchval(
            "UPDATE messages SET status = 'retrying', last_error = $3, lease_until = NULL,"
            " updated_at = now() WHERE id = $1 AND attempts = $2 AND status = ANY($4::text[])"
            " RETURNING channel",
            env.job_id,
            attempt,
            error,
            send_sources(_S.RETRYING),
        )
        if channel is None:
            return False
        SENDS.labels(channel, "retried").inc()
        return True

    async def dead(self, env: JobEnvelope, attempt: int, error: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            moved = await conn.fetchrow(
                "UPDATE messages SET status = 'dlq', last_error = $3, lease_until = NULL,"
                " updated_at = now() WHERE id = $1 AND attempts = $2"
                " AND status = ANY($4::text[]) RETURNING company_id, lead_id, channel",
                env.job_id,
                attempt,
                error,
                send_sources(_S.DLQ),
            )
            if moved is None:
                return False
            await record_event(
                conn,
                moved["company_id"],
                moved["lead_id"],
                EventType.MESSAGE_DEAD_LETTERED,
                {"message_id": str(env.job_id), "channel": moved["channel"], "error": error},
            )
        SENDS.labels(moved["channel"], "dead_lettered").inc()
        return True

    async def defer(self, env: JobEnvelope, attempt: int, until: datetime, reason: str) -> bool:
        """Park the send in a timer, its attempt given back, with `message.deferred` when the
        deferral is new or its reason changed (pacing re-defers a send every few seconds)."""
        async with self.pool.acquire() as conn, conn.transaction():
            moved = await conn.fetchrow(
                self._DEFER,
                env.job_id,
                attempt,
                until.isoformat(),
                reason,
                send_sources(_S.SCHEDULED),
            )
            if moved is None:
                return False
            if moved["prior_reason"] != reason:
                await record_event(
                    conn,
                    moved["company_id"],
                    moved["lead_id"],
                    EventType.MESSAGE_DEFERRED,
                    {
                        "message_id": str(env.job_id),
                        "channel": moved["channel"],
                        "reason": reason,
                        "deferred_until": until.isoformat(),
                    },
                )
            await conn.execute(
                _RESUME_TIMER,
                until,
                "messages",
                env.job_id,
                env.company_id,
                env.lead_id,
                reason[:500],
            )
        return True

    async def release(self, env: JobEnvelope, attempt: int) -> bool:
        # A send that reached 'sending' is never released: it may have left.
        return await self._move(
            "UPDATE messages SET attempts = attempts - 1, lease_until = NULL, updated_at = now()"
            " WHERE id = $1 AND attempts = $2 AND status IN ('queued', 'retrying') RETURNING id",
            env.job_id,
            attempt,
        )

    async def renew(self, held: list[tuple[uuid.UUID, int]], lease: float) -> None:
        if held:
            await self.bookkeeping.execute(
                self._RENEW,
                [h[0] for h in held],
                [h[1] for h in held],
                lease,
                sorted(SEND_LIVE),
            )

    # --- the send's own outcomes, written by dispatch's handler through the bus ---

    async def mark_sending(self, message_id: uuid.UUID, attempt: int) -> bool:
        """Committed before the provider is called; False if this run no longer owns the send."""
        return await self._move(
            "UPDATE messages SET status = 'sending', updated_at = now()"
            " WHERE id = $1 AND attempts = $2 AND status = ANY($3::text[]) RETURNING id",
            message_id,
            attempt,
            send_sources(_S.SENDING),
        )

    async def record_sent(
        self,
        message_id: uuid.UUID,
        attempt: int,
        *,
        status: Literal["sent", "logged"],
        provider_message_id: str,
        meta: dict[str, Any],
    ) -> bool:
        """The provider took it: record its id, the lead's last outbound time and an event,
        retried through a database outage. A late confirmation also turns an 'unknown' send
        into 'sent'."""
        return await outlast_outage(
            lambda: self._record_sent(
                message_id,
                attempt,
                status=status,
                provider_message_id=provider_message_id,
                meta=meta,
            )
        )

    async def unmark_sending(self, message_id: uuid.UUID, attempt: int, reason: str) -> bool:
        """Take back 'sending' when the request provably never left (our own database failed
        before it was made): the send may then be retried. Retried through the outage."""
        return await outlast_outage(
            lambda: self._move(
                "UPDATE messages SET status = 'retrying', last_error = $3, updated_at = now()"
                " WHERE id = $1 AND attempts = $2 AND status = 'sending' RETURNING id",
                message_id,
                attempt,
                reason[:2000],
            )
        )

    async def record_unsent(
        self,
        message_id: uuid.UUID,
        attempt: int,
        *,
        status: Literal["suppressed", "held"],
        reason: str,
    ) -> bool:
        """Finish a send that did not go out, with its reason and a `message.<status>` event."""
        return await outlast_outage(
            lambda: self._record_unsent(message_id, attempt, status=status, reason=reason)
        )

    async def record_unknown(
        self,
        message_id: uuid.UUID,
        attempt: int,
        reason: str,
        *,
        provider_message_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SendStatus | None:
        """The send may have left and cannot be confirmed: never repeated, shown to operators;
        the status recorded, None if this run no longer owns the send. A channel that knows the
        id the message would carry (WhatsApp Web) records it, so the provider's acknowledgement
        confirms the send ('sent') whether it comes after this or came first."""
        return await outlast_outage(
            lambda: self._record_unknown(
                message_id, attempt, reason, provider_message_id=provider_message_id, meta=meta
            )
        )

    # The provider took it: its id, the lead's last outbound time and an event, in one
    # statement. A late confirmation also turns an 'unknown' send into 'sent'.
    _SENT = """
    WITH moved AS (
        UPDATE messages SET status = $3, provider_message_id = $4, sent_at = now(),
               last_error = NULL, meta = meta || $5, lease_until = NULL,
               updated_at = now()
         WHERE id = $1 AND ((status = 'sending' AND attempts = $2) OR status = 'unknown')
        RETURNING company_id, lead_id, channel
    ), lead AS (
        UPDATE leads SET last_outbound_at = now(), updated_at = now()
          FROM moved WHERE leads.id = moved.lead_id RETURNING 1
    ), ev AS (
        INSERT INTO events (company_id, lead_id, type, payload)
        SELECT company_id, lead_id, $6,
               jsonb_build_object('message_id', $1::text, 'channel', channel,
                                  'status', $3::text, 'provider_message_id', $4::text)
        FROM moved RETURNING 1
    )
    SELECT count(*) FROM moved
    """
    # Whether the provider already reported the message it would carry as taken (any status
    # but 'failed'), for the send's channel.
    _ACKNOWLEDGED = """
    SELECT EXISTS (
        SELECT 1 FROM provider_statuses p JOIN messages m ON m.channel = p.channel
         WHERE m.id = $1 AND p.provider_message_id = $2 AND p.status <> 'failed')
    """

    async def _record_sent(
        self,
        message_id: uuid.UUID,
        attempt: int,
        *,
        status: Literal["sent", "logged"],
        provider_message_id: str,
        meta: dict[str, Any],
        conn: Executor | None = None,
    ) -> bool:
        moved = await (conn or self.pool).fetchval(
            self._SENT,
            message_id,
            attempt,
            status,
            provider_message_id,
            meta,
            EventType.MESSAGE_SENT.value,
        )
        return bool(moved)

    async def _record_unsent(
        self,
        message_id: uuid.UUID,
        attempt: int,
        *,
        status: Literal["suppressed", "held"],
        reason: str,
    ) -> bool:
        """Finish a send that did not go out, with its reason and a `message.<status>` event."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE messages SET status = $3, last_error = $4, lease_until = NULL,"
                " updated_at = now() WHERE id = $1 AND attempts = $2"
                " AND status = ANY($5::text[]) RETURNING company_id, lead_id, channel",
                message_id,
                attempt,
                status,
                reason[:2000],
                send_sources(SendStatus(status)),
            )
            if row is None:
                return False
            await record_event(
                conn,
                row["company_id"],
                row["lead_id"],
                EventType(f"message.{status}"),
                {"message_id": str(message_id), "channel": row["channel"], "reason": reason[:2000]},
            )
        return True

    async def _record_unknown(
        self,
        message_id: uuid.UUID,
        attempt: int,
        reason: str,
        *,
        provider_message_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SendStatus | None:
        """The send may have left and cannot be confirmed: never repeated, shown to operators.
        Unless the provider's acknowledgement of the id it would carry came first (while the
        send was still waiting for it): then it is 'sent'."""
        async with self.pool.acquire() as conn, conn.transaction():
            if provider_message_id is not None:
                # Ingest files a status under this lock, and confirms an 'unknown' send after
                # it commits; our check runs in its own statement, after the lock, so it sees a
                # status filed while we waited. Either the status is seen here or this row is
                # 'unknown' when ingest looks: a late acknowledgement is never lost.
                await conn.execute("SELECT provider_id_lock($1)", provider_message_id)
                if await conn.fetchval(self._ACKNOWLEDGED, message_id, provider_message_id):
                    sent = await self._record_sent(
                        message_id,
                        attempt,
                        status="sent",
                        provider_message_id=provider_message_id,
                        meta={**(meta or {}), "late_confirmation": True},
                        conn=conn,
                    )
                    return _S.SENT if sent else None
            row = await conn.fetchrow(
                "UPDATE messages SET status = 'unknown', last_error = $3, lease_until = NULL,"
                " provider_message_id = coalesce($5, provider_message_id),"
                " meta = meta || $6::jsonb, updated_at = now() WHERE id = $1 AND attempts = $2"
                " AND status = ANY($4::text[]) RETURNING company_id, lead_id, channel",
                message_id,
                attempt,
                reason[:2000],
                send_sources(_S.UNKNOWN),
                provider_message_id,
                meta or {},
            )
            if row is None:
                return None
            await record_event(
                conn,
                row["company_id"],
                row["lead_id"],
                EventType.MESSAGE_SEND_AMBIGUOUS,
                {"message_id": str(message_id), "channel": row["channel"], "reason": reason[:2000]},
            )
        return _S.UNKNOWN

    @staticmethod
    async def cancel(
        conn: asyncpg.Connection, message_ids: list[uuid.UUID], reason: str
    ) -> list[uuid.UUID]:
        """Cancel sends that have not begun to leave (queued, retrying, parked), in the caller's
        transaction; returns those cancelled. A run holding one finds it gone at `mark_sending`
        (fenced on the same statuses), so a cancelled send never goes out."""
        if not message_ids:
            return []
        rows = await conn.fetch(
            "UPDATE messages SET status = 'cancelled', last_error = $2, lease_until = NULL,"
            " updated_at = now() WHERE id = ANY($1::uuid[]) AND direction = 'outbound'"
            " AND status = ANY($3::text[]) RETURNING id",
            message_ids,
            reason[:2000],
            send_sources(_S.CANCELLED),
        )
        return [r["id"] for r in rows]

    # --- the outbox side ---

    async def requeue(self, conn: asyncpg.Connection, row_id: uuid.UUID) -> Outgoing | None:
        row = await conn.fetchrow(
            "UPDATE messages SET status = 'queued', generation = generation + 1,"
            " published_at = NULL, updated_at = now()"
            f" WHERE id = $1 AND status = 'scheduled' RETURNING {SEND_COLUMNS}",
            row_id,
        )
        return outgoing_from_row("messages", row) if row else None

    async def replay(
        self,
        conn: asyncpg.Connection,
        limit: int,
        ids: list[uuid.UUID] | None,
        task: str | None,
        dry_run: bool,
    ) -> list[Outgoing]:
        if task is not None and task != "dispatch.send":
            return []
        pick = (
            "SELECT id FROM messages WHERE status = 'dlq' AND direction = 'outbound'"
            " AND send_params IS NOT NULL AND ($2::uuid[] IS NULL OR id = ANY($2::uuid[]))"
            " ORDER BY updated_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"
        )
        if dry_run:
            rows = await conn.fetch(
                f"SELECT {SEND_COLUMNS} FROM messages WHERE id IN ({pick})", limit, ids
            )
        else:
            rows = await conn.fetch(
                "UPDATE messages SET status = 'queued', attempts = 0, replays = replays + 1,"
                " generation = generation + 1, published_at = NULL, last_error = NULL,"
                " lease_until = NULL, updated_at = now()"
                f" WHERE id IN ({pick}) RETURNING {SEND_COLUMNS}",
                limit,
                ids,
            )
        return [outgoing_from_row("messages", r) for r in rows]

    async def unpublished(
        self, conn: asyncpg.Connection, grace: float, limit: int
    ) -> list[Outgoing]:
        rows = await conn.fetch(
            f"SELECT {SEND_COLUMNS} FROM messages WHERE direction = 'outbound'"
            " AND status = 'queued' AND published_at IS NULL AND send_params IS NOT NULL"
            " AND updated_at <= now() - make_interval(secs => $1::float8)"
            " ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            grace,
            limit,
        )
        return [outgoing_from_row("messages", r) for r in rows]

    async def mark_published(
        self, conn: asyncpg.Connection | asyncpg.Pool, items: list[Outgoing]
    ) -> None:
        await mark_published(conn, "messages", items)

    async def stale(
        self,
        conn: asyncpg.Pool,
        horizon: float,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        return await _stale(
            conn, "messages", SEND_COLUMNS, sorted(SEND_LIVE), horizon, after, limit
        )

    async def bump(self, pool: asyncpg.Pool, row: asyncpg.Record) -> Outgoing | None:
        if row["send_params"] is None:
            return None
        return await _bump(pool, "messages", SEND_COLUMNS, row)


def ledgers_for(
    pool: asyncpg.Pool, bookkeeping: asyncpg.Pool | None = None
) -> dict[LedgerName, Ledger]:
    return {"jobs": JobLedger(pool, bookkeeping), "messages": SendLedger(pool, bookkeeping)}
