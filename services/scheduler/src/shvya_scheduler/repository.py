"""The scheduler's SQL: claim due timers with FOR UPDATE SKIP LOCKED, so replicas never fire the
same timer twice, and mark them fired (or failed, with the reason) in the same transaction as
the rows they put back on the queue; and the dead-letter depth per task and the paused channels
for the gauges."""

from __future__ import annotations

import uuid

import asyncpg

CLAIM_DUE = """
SELECT id, kind, envelope, ledger, target_id, task_name, task_params, priority, idempotency_key,
       company_id, lead_id
FROM timers
WHERE status = 'pending' AND due_at <= now()
ORDER BY due_at
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

DLQ_DEPTH = """
SELECT task_name AS task, count(*) AS n FROM jobs WHERE status = 'dlq' GROUP BY task_name
UNION ALL
SELECT 'dispatch.send', count(*) FROM messages WHERE status = 'dlq' AND direction = 'outbound'
"""


PAUSED_CHANNELS = """
SELECT channel, count(*) AS n FROM channel_pauses
WHERE resumed_at IS NULL AND (paused_until IS NULL OR paused_until > now())
GROUP BY channel
"""


class TimerRepository:
    @staticmethod
    async def claim_due_timers(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(CLAIM_DUE, limit)
        return rows

    @staticmethod
    async def mark_fired(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> None:
        if ids:
            await conn.execute(
                "UPDATE timers SET status = 'fired', fired_at = now() WHERE id = ANY($1::uuid[])",
                ids,
            )

    @staticmethod
    async def mark_failed(conn: asyncpg.Connection, failed: list[tuple[uuid.UUID, str]]) -> None:
        if failed:
            await conn.execute(
                "UPDATE timers SET status = 'failed', fired_at = now(), last_error = f.error"
                " FROM unnest($1::uuid[], $2::text[]) AS f(id, error) WHERE timers.id = f.id",
                [f[0] for f in failed],
                [f[1] for f in failed],
            )

    @staticmethod
    async def paused_channels(pool: asyncpg.Pool) -> dict[str, int]:
        return {r["channel"]: r["n"] for r in await pool.fetch(PAUSED_CHANNELS)}

    @staticmethod
    async def dlq_depth(pool: asyncpg.Pool) -> dict[str, int]:
        return {r["task"]: r["n"] for r in await pool.fetch(DLQ_DEPTH)}
