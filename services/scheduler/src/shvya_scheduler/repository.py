"""The scheduler's SQL: claim due timers with FOR UPDATE SKIP LOCKED, so replicas never fire the
same timer twice, and mark them fired in the same transaction as their publish."""

from __future__ import annotations

import uuid

import asyncpg

CLAIM_DUE = """
SELECT id, kind, envelope, task_name, task_params, priority, idempotency_key, company_id, lead_id
FROM timers
WHERE status = 'pending' AND due_at <= now()
ORDER BY due_at
LIMIT $1
FOR UPDATE SKIP LOCKED
"""


class TimerRepository:
    @staticmethod
    async def claim_due_timers(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(CLAIM_DUE, limit)
        return rows

    @staticmethod
    async def mark_fired(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> None:
        await conn.execute(
            "UPDATE timers SET status = 'fired', fired_at = now() WHERE id = ANY($1::uuid[])", ids
        )
