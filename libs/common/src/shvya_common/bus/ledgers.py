"""Where a job's state is recorded: the jobs table, or for sends the outbound message row.

The consumer loop is the same for both; only these statements differ. Every method is safe to
repeat, because a crash can make the loop repeat any of them after a redelivery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import asyncpg

from shvya_common.contracts.jobs import JobEnvelope

_RESUME_TIMER = """
INSERT INTO timers (kind, due_at, envelope, company_id, lead_id, reason)
VALUES ('resume', $1, $2, $3, $4, $5)
"""


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a delivery: run it, drop a duplicate, or dead-letter an orphan."""

    action: Literal["run", "duplicate", "orphan"]
    prior_status: str | None = None


class Ledger(Protocol):
    async def claim(self, env: JobEnvelope, attempt: int) -> Claim: ...
    async def complete(self, env: JobEnvelope, result: dict[str, Any] | None) -> None: ...
    async def retry(self, env: JobEnvelope, error: str, run_after: datetime) -> None: ...
    async def dead(self, env: JobEnvelope, error: str, attempts: int) -> None: ...
    async def defer(
        self, env: JobEnvelope, until: datetime, attempt_base: int, reason: str
    ) -> None: ...
    async def requeue(self, conn: asyncpg.Connection, job_id: Any) -> bool: ...


async def _park(
    conn: asyncpg.Connection, env: JobEnvelope, until: datetime, attempt_base: int, reason: str
) -> None:
    resumed = env.model_copy(update={"attempt_base": attempt_base})
    await conn.execute(
        _RESUME_TIMER,
        until,
        json.loads(resumed.model_dump_json()),
        env.company_id,
        env.lead_id,
        reason[:500],
    )


class JobLedger:
    """State in `jobs`: queued → processing → completed | failed (retry) → dlq."""

    # A delivery that arrives before its enqueueing transaction commits waits here on the row's
    # unique-index lock; if that transaction rolled back, the insert wins and we see an orphan.
    _CLAIM = """
    INSERT INTO jobs (id, task_name, task_params, priority, status, attempts, company_id, lead_id,
                      started_at)
    VALUES ($1, $2, $3, $4, 'processing', $5, NULL, NULL, now())
    ON CONFLICT (id) DO UPDATE
       SET status = 'processing', attempts = EXCLUDED.attempts, started_at = now(),
           updated_at = now()
     WHERE jobs.status IN ('queued', 'failed', 'processing')
    RETURNING (xmax = 0) AS orphan
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(self, env: JobEnvelope, attempt: int) -> Claim:
        row = await self.pool.fetchrow(
            self._CLAIM, env.job_id, env.task, env.params, env.priority, attempt
        )
        if row is None:
            return Claim("duplicate")
        return Claim("orphan" if row["orphan"] else "run")

    async def complete(self, env: JobEnvelope, result: dict[str, Any] | None) -> None:
        await self.pool.execute(
            "UPDATE jobs SET status = 'completed', completed_at = now(), last_error = NULL,"
            " result = $2, updated_at = now() WHERE id = $1",
            env.job_id,
            result,
        )

    async def retry(self, env: JobEnvelope, error: str, run_after: datetime) -> None:
        await self.pool.execute(
            "UPDATE jobs SET status = 'failed', last_error = $2, run_after = $3,"
            " updated_at = now() WHERE id = $1",
            env.job_id,
            error,
            run_after,
        )

    async def dead(self, env: JobEnvelope, error: str, attempts: int) -> None:
        await self.pool.execute(
            "UPDATE jobs SET status = 'dlq', last_error = $2, attempts = $3,"
            " completed_at = now(), updated_at = now() WHERE id = $1",
            env.job_id,
            error,
            attempts,
        )

    async def defer(
        self, env: JobEnvelope, until: datetime, attempt_base: int, reason: str
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE jobs SET status = 'scheduled', run_after = $2, attempts = $3,"
                " updated_at = now() WHERE id = $1",
                env.job_id,
                until,
                attempt_base,
            )
            await _park(conn, env, until, attempt_base, reason)

    async def requeue(self, conn: asyncpg.Connection, job_id: Any) -> bool:
        status = await conn.fetchval(
            "UPDATE jobs SET status = 'queued', updated_at = now()"
            " WHERE id = $1 AND status = 'scheduled' RETURNING status",
            job_id,
        )
        return status is not None


class SendLedger:
    """State on the outbound message: queued → sending → sent | retrying → dlq.

    'sending' is written and committed before the provider is called, so a redelivery that
    finds it knows a send may have left and must not repeat it.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(self, env: JobEnvelope, attempt: int) -> Claim:
        async with self.pool.acquire() as conn:
            # Wait for the publishing transaction (the row lock) before judging the row absent.
            for _ in range(2):
                row = await conn.fetchrow(
                    "UPDATE messages SET attempts = $2, updated_at = now()"
                    " WHERE id = $1 AND direction = 'outbound' RETURNING status",
                    env.job_id,
                    attempt,
                )
                if row is not None:
                    break
                created = env.enqueued_at.timestamp()
                age = await conn.fetchval("SELECT extract(epoch FROM now()) - $1::float8", created)
                if age is None or age > 30:
                    return Claim("orphan")
                await conn.execute("SELECT pg_sleep(0.2)")
            else:
                return Claim("orphan")
        status = row["status"]
        if status in ("queued", "retrying", "scheduled", "sending"):
            return Claim("run", status)
        return Claim("duplicate", status)

    async def complete(self, env: JobEnvelope, result: dict[str, Any] | None) -> None:
        # The handler records the send's own outcome (sent, suppressed, ...); nothing to add.
        return None

    async def retry(self, env: JobEnvelope, error: str, run_after: datetime) -> None:
        await self.pool.execute(
            "UPDATE messages SET status = 'retrying', last_error = $2, updated_at = now()"
            " WHERE id = $1 AND status IN ('queued', 'sending', 'retrying', 'scheduled')",
            env.job_id,
            error,
        )

    async def dead(self, env: JobEnvelope, error: str, attempts: int) -> None:
        await self.pool.execute(
            "UPDATE messages SET status = 'dlq', last_error = $2, attempts = $3, updated_at = now()"
            " WHERE id = $1 AND status NOT IN ('sent', 'delivered', 'read')",
            env.job_id,
            error,
            attempts,
        )

    async def defer(
        self, env: JobEnvelope, until: datetime, attempt_base: int, reason: str
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE messages SET status = 'scheduled', attempts = $2, updated_at = now(),"
                " meta = meta || jsonb_build_object('deferred_until', $3::text,"
                " 'deferred_reason', $4::text) WHERE id = $1",
                env.job_id,
                attempt_base,
                until.isoformat(),
                reason,
            )
            await _park(conn, env, until, attempt_base, reason)

    async def requeue(self, conn: asyncpg.Connection, job_id: Any) -> bool:
        status = await conn.fetchval(
            "UPDATE messages SET status = 'queued', updated_at = now()"
            " WHERE id = $1 AND status = 'scheduled' RETURNING status",
            job_id,
        )
        return status is not None


def ledgers_for(pool: asyncpg.Pool) -> dict[str, Ledger]:
    return {"jobs": JobLedger(pool), "messages": SendLedger(pool)}
