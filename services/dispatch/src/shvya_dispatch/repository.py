"""Dispatch's SQL: the send's state transitions on the outbound message row."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg


class DispatchRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def mark_sending(self, message_id: uuid.UUID) -> bool:
        """Committed before the provider is called; False if the send is no longer pending."""
        status = await self.pool.fetchval(
            "UPDATE messages SET status = 'sending', updated_at = now()"
            " WHERE id = $1 AND status IN ('queued', 'retrying', 'scheduled') RETURNING status",
            message_id,
        )
        return status is not None

    async def record_sent(
        self,
        message_id: uuid.UUID,
        lead_id: uuid.UUID,
        company_id: uuid.UUID,
        *,
        status: str,
        provider_message_id: str,
        channel: str,
        meta: dict[str, Any],
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE messages SET status = $2, provider_message_id = $3, sent_at = now(),"
                " last_error = NULL, meta = meta || $4, updated_at = now() WHERE id = $1",
                message_id, status, provider_message_id, meta,
            )  # fmt: skip
            await conn.execute(
                "UPDATE leads SET last_outbound_at = now(), updated_at = now() WHERE id = $1",
                lead_id,
            )
            await conn.execute(
                "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2,"
                " 'message.sent', jsonb_build_object('message_id', $3::uuid, 'channel', $4::text,"
                " 'status', $5::text, 'provider_message_id', $6::text))",
                company_id, lead_id, message_id, channel, status, provider_message_id,
            )  # fmt: skip

    async def record_ambiguous(
        self, message_id: uuid.UUID, lead_id: uuid.UUID, company_id: uuid.UUID
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE messages SET status = 'unknown', updated_at = now(),"
                " last_error = 'the worker stopped during the send; not repeated' WHERE id = $1",
                message_id,
            )
            await conn.execute(
                "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2,"
                " 'message.send_ambiguous', jsonb_build_object('message_id', $3::uuid))",
                company_id, lead_id, message_id,
            )  # fmt: skip
