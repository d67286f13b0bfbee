"""Engage's SQL: what a reply needs to know, and recording what it produced."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True)
class AiConfig:
    model: str | None
    temperature: float
    max_tokens: int
    system_prompt: str


@dataclass(frozen=True)
class Turn:
    direction: str
    body: str


@dataclass(frozen=True)
class EngageContext:
    company_id: uuid.UUID
    lead_id: uuid.UUID
    contact_name: str | None
    phone_e164: str | None
    email: str | None
    stage: str | None
    attributes: dict[str, Any]
    message_id: uuid.UUID
    message_text: str
    channel: str
    config: AiConfig
    history: list[Turn]


DEFAULT_CONFIG = AiConfig(None, 0.7, 500, "You are a helpful sales assistant.")


class EngageRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load_context(
        self, lead_id: uuid.UUID, message_id: uuid.UUID, history: int
    ) -> EngageContext | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                """
                SELECT l.company_id, l.contact_name, l.phone_e164, l.email, l.attributes,
                       s.name AS stage, m.body, m.channel, m.created_at,
                       a.model, a.temperature, a.max_tokens, a.system_prompt
                FROM leads l
                JOIN messages m ON m.id = $2 AND m.lead_id = l.id
                LEFT JOIN stages s ON s.id = l.stage_id
                LEFT JOIN ai_models a ON a.company_id = l.company_id
                WHERE l.id = $1
                """,
                lead_id, message_id,
            )  # fmt: skip
            if row is None:
                return None
            turns = await conn.fetch(
                """
                SELECT direction, body FROM (
                    SELECT direction, body, created_at FROM messages
                    WHERE lead_id = $1 AND created_at < $2 AND id <> $3
                      AND status NOT IN ('dlq', 'suppressed')
                    ORDER BY created_at DESC LIMIT $4) recent
                ORDER BY created_at
                """,
                lead_id, row["created_at"], message_id, history,
            )  # fmt: skip
        config = (
            AiConfig(row["model"], row["temperature"], row["max_tokens"], row["system_prompt"])
            if row["system_prompt"] is not None
            else DEFAULT_CONFIG
        )
        return EngageContext(
            company_id=row["company_id"], lead_id=lead_id, contact_name=row["contact_name"],
            phone_e164=row["phone_e164"], email=row["email"], stage=row["stage"],
            attributes=row["attributes"], message_id=message_id, message_text=row["body"],
            channel=row["channel"], config=config,
            history=[Turn(t["direction"], t["body"]) for t in turns],
        )  # fmt: skip

    async def reply_exists(self, send_key: str) -> bool:
        return bool(await self.pool.fetchval("SELECT 1 FROM messages WHERE send_key = $1", send_key))

    @staticmethod
    async def record_reply(
        conn: asyncpg.Connection,
        ctx: EngageContext,
        *,
        job_id: uuid.UUID,
        reply_message_id: uuid.UUID,
        responder: str,
        model: str | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        await conn.execute(
            """
            INSERT INTO events (company_id, lead_id, type, payload)
            VALUES ($1, $2, 'ai.reply_generated',
                    jsonb_build_object('job_id', $3::uuid, 'message_id', $4::uuid,
                                       'reply_message_id', $5::uuid, 'responder', $6::text,
                                       'model', $7::text, 'prompt_tokens', $8::int,
                                       'completion_tokens', $9::int))
            """,
            ctx.company_id, ctx.lead_id, job_id, ctx.message_id, reply_message_id, responder,
            model, prompt_tokens, completion_tokens,
        )  # fmt: skip
        await conn.execute(
            """
            INSERT INTO ai_sessions (company_id, lead_id, turns, context)
            VALUES ($1, $2, 1, jsonb_build_object('last_message_id', $3::uuid))
            ON CONFLICT (lead_id) DO UPDATE
               SET turns = ai_sessions.turns + 1, updated_at = now(),
                   context = ai_sessions.context || EXCLUDED.context
            """,
            ctx.company_id, ctx.lead_id, ctx.message_id,
        )  # fmt: skip
