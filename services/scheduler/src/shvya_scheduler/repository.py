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


# Pauses in force, per channel: a company's channel (`channel_pauses`, written by WhatsApp
# Cloud), and a WhatsApp Web account's (`whatsapp_web_accounts`: a restriction, a timelock, a
# ban or a logout; lifted by setting `paused_until` to now). A channel account's profile
# (`ca-<id>`) counts while the account exists, so a deleted account cannot hold the gauge up.
PAUSED_CHANNELS = """
SELECT channel, count(*) AS n FROM channel_pauses
WHERE resumed_at IS NULL AND (paused_until IS NULL OR paused_until > now())
GROUP BY channel
UNION ALL
SELECT 'whatsapp_web', count(*) FROM whatsapp_web_accounts w
WHERE w.paused_at IS NOT NULL AND (w.paused_until IS NULL OR w.paused_until > now())
  AND (w.account NOT LIKE 'ca-%' OR EXISTS (
      SELECT 1 FROM channel_accounts c
      WHERE c.channel = 'whatsapp_web' AND 'ca-' || c.id::text = w.account))
GROUP BY 1
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
        """Pauses in force per channel (WhatsApp Web: paused accounts)."""
        paused: dict[str, int] = {}
        for r in await pool.fetch(PAUSED_CHANNELS):
            paused[r["channel"]] = paused.get(r["channel"], 0) + r["n"]
        return paused

    @staticmethod
    async def dlq_depth(pool: asyncpg.Pool) -> dict[str, int]:
        return {r["task"]: r["n"] for r in await pool.fetch(DLQ_DEPTH)}
