"""Engage's SQL: what a reply, a summary or a bump-up needs to know, and recording what each
produced (events with token counts, the AI session, the lead's summary and follow-up state)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shvya_common.bus import Along

# Messages that never reached the lead are not part of the conversation.
_DEAD_STATUSES = ("dlq", "suppressed", "failed", "cancelled")
WHATSAPP = ("whatsapp_cloud", "whatsapp_web")


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
class LeadFacts:
    company_id: uuid.UUID
    lead_id: uuid.UUID
    contact_name: str | None
    phone_e164: str | None
    email: str | None
    stage: str | None
    attributes: dict[str, Any]
    # WhatsApp's business-scoped user id: how a username user without a phone is answered.
    wa_user_id: str | None = None
    # Set while an agent has taken the conversation over: the AI does not answer.
    handoff_by: str | None = None

    @property
    def first_name(self) -> str:
        return (self.contact_name or "").strip().split(" ")[0]


@dataclass(frozen=True)
class EngageContext:
    lead: LeadFacts
    message_id: uuid.UUID
    message_text: str
    channel: str
    config: AiConfig
    history: list[Turn]
    # A message from a WhatsApp group: the bot never answers it privately.
    group_id: str | None = None
    provider_message_id: str | None = None
    # The customer deleted the message before it was answered: nothing to answer.
    deleted: bool = False

    @property
    def company_id(self) -> uuid.UUID:
        return self.lead.company_id

    @property
    def lead_id(self) -> uuid.UUID:
        return self.lead.lead_id


@dataclass(frozen=True)
class ReplyContext:
    """What ai.engage reads in its one statement: whether the message is answered already,
    its context (None: lead or message gone), the automated replies in the breaker's window,
    and whether the company has a knowledge base to search."""

    answered: bool
    context: EngageContext | None
    recent_replies: int
    has_kb: bool


@dataclass(frozen=True)
class Conversation:
    """A lead's recent conversation, for a summary."""

    lead: LeadFacts
    config: AiConfig
    turns: list[Turn]
    last_message_id: uuid.UUID | None
    last_message_at: datetime | None


@dataclass(frozen=True)
class BumpupState:
    """What decides whether a bump-up may go out now."""

    lead: LeadFacts
    config: AiConfig
    last_direction: str | None
    last_message_at: datetime | None
    whatsapp_channel: str | None
    sent: int
    unanswered: int
    turns: list[Turn]


DEFAULT_CONFIG = AiConfig(None, 0.7, 500, "You are a helpful sales assistant.")

_LEAD_COLUMNS = """
    l.company_id, l.contact_name, l.phone_e164, l.email, l.attributes, s.name AS stage,
    l.wa_user_id, l.handoff_by,
    a.model, a.temperature, a.max_tokens, a.system_prompt
"""
_LEAD_JOINS = """
    LEFT JOIN stages s ON s.id = l.stage_id
    LEFT JOIN ai_models a ON a.company_id = l.company_id
"""


def _session_context(
    ctx: EngageContext,
    reply_message_id: uuid.UUID,
    payload: dict[str, Any],
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    return {
        "last_message_id": str(ctx.message_id),
        "last_reply_message_id": str(reply_message_id),
        "responder": payload.get("responder"),
        "model": payload.get("model"),
        "retrieval_mode": payload.get("retrieval_mode"),
        "last_sources": [s["doc_id"] for s in payload.get("sources", [])],
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }


def _lead(row: asyncpg.Record, lead_id: uuid.UUID) -> LeadFacts:
    return LeadFacts(
        company_id=row["company_id"],
        lead_id=lead_id,
        contact_name=row["contact_name"],
        phone_e164=row["phone_e164"],
        email=row["email"],
        stage=row["stage"],
        attributes=row["attributes"] or {},
        wa_user_id=row["wa_user_id"],
        handoff_by=row["handoff_by"],
    )


def _config(row: asyncpg.Record) -> AiConfig:
    if row["system_prompt"] is None:
        return DEFAULT_CONFIG
    return AiConfig(row["model"], row["temperature"], row["max_tokens"], row["system_prompt"])


async def _recent_turns(
    conn: asyncpg.Connection,
    lead_id: uuid.UUID,
    limit: int,
    before: datetime | None = None,
    exclude: uuid.UUID | None = None,
) -> list[Turn]:
    rows = await conn.fetch(
        """
        SELECT direction, body FROM (
            SELECT direction, body, created_at, id FROM messages
            WHERE lead_id = $1 AND ($2::timestamptz IS NULL OR created_at < $2)
              AND ($3::uuid IS NULL OR id <> $3) AND status <> ALL($4::text[])
            ORDER BY created_at DESC, id DESC LIMIT $5) recent
        ORDER BY created_at, id
        """,
        lead_id,
        before,
        exclude,
        list(_DEAD_STATUSES),
        limit,
    )
    return [Turn(r["direction"], r["body"]) for r in rows]


def recent_replies(lead: str, window: str) -> str:
    """The count the reply breaker judges by: the lead's automated replies and follow-ups that
    were (or will be) sent within `window` seconds (SQL expressions for the lead's id and the
    window).

    It says `direction <> 'inbound'` (the same rows: the column holds only the two), not
    `= 'outbound'`: that form lets the planner use messages_outbound_status, the partial index
    over every outbound message, and with statistics taken before a backlog of sends it combined
    that index with the lead's, reading every company's sends for each reply."""
    return f"""
    SELECT count(*) FROM messages
    WHERE lead_id = {lead} AND direction <> 'inbound'
      AND meta->>'purpose' IN ('reply', 'followup')
      AND status NOT IN ('dlq', 'suppressed', 'failed', 'cancelled', 'held')
      AND created_at > now() - make_interval(secs => {window}::float8)"""


# ai.engage's one read: the reply's send key taken yet, the lead, the message, the company's
# model settings, the history before the message, the automated replies in the breaker's
# window ($6 seconds; 0 = not counted), whether the company has knowledge-base chunks; and it
# cancels the lead's pending bump-ups (the lead is talking: a bump-up would be moot, and its
# handler re-checks that anyway). The CTE runs whatever the answer.
_LOAD_REPLY = f"""
WITH cancelled AS (
    UPDATE timers SET status = 'cancelled', reason = 'lead replied'
    WHERE lead_id = $1 AND status = 'pending' AND task_name = 'followup.bumpup'
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM messages r WHERE r.send_key = $4) AS answered,
       (SELECT count(*) FROM cancelled) AS cancelled,
       found.*
FROM (SELECT 1) one
LEFT JOIN LATERAL (
    SELECT {_LEAD_COLUMNS}, m.body, m.channel, m.created_at,
           m.meta->>'group_id' AS group_id, m.provider_message_id,
           m.deleted_at IS NOT NULL AS deleted, h.directions, h.bodies,
           CASE WHEN $6::float8 > 0 THEN ({recent_replies("l.id", "$6")})
           ELSE 0 END AS recent_replies,
           EXISTS (SELECT 1 FROM ai_kb_counts k WHERE k.company_id = l.company_id AND k.chunks > 0)
               AS has_kb
    FROM leads l
    JOIN messages m ON m.id = $2 AND m.lead_id = l.id
    {_LEAD_JOINS}
    LEFT JOIN LATERAL (
        SELECT array_agg(direction ORDER BY created_at, id) AS directions,
               array_agg(body ORDER BY created_at, id) AS bodies
        FROM (SELECT direction, body, created_at, id FROM messages
              WHERE lead_id = $1 AND created_at < m.created_at AND id <> $2
                AND status <> ALL($3::text[]) AND deleted_at IS NULL
              ORDER BY created_at DESC, id DESC LIMIT $5) recent
    ) h ON true
    WHERE l.id = $1
) found ON true
"""


class EngageRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # --- ai.engage ---

    async def load_reply(
        self,
        lead_id: uuid.UUID,
        message_id: uuid.UUID,
        history: int,
        send_key: str,
        breaker_window: float,
    ) -> ReplyContext:
        """Everything ai.engage reads before the model call, in one round trip."""
        row = await self.pool.fetchrow(
            _LOAD_REPLY,
            lead_id,
            message_id,
            list(_DEAD_STATUSES),
            send_key,
            history,
            breaker_window,
        )
        assert row is not None
        if row["company_id"] is None:
            return ReplyContext(bool(row["answered"]), None, 0, False)
        turns = [
            Turn(d, b) for d, b in zip(row["directions"] or [], row["bodies"] or [], strict=True)
        ]
        ctx = EngageContext(
            lead=_lead(row, lead_id),
            message_id=message_id,
            message_text=row["body"],
            channel=row["channel"],
            config=_config(row),
            history=turns,
            group_id=row["group_id"],
            provider_message_id=row["provider_message_id"],
            deleted=bool(row["deleted"]),
        )
        return ReplyContext(
            bool(row["answered"]), ctx, int(row["recent_replies"] or 0), bool(row["has_kb"])
        )

    @staticmethod
    def reply_record(
        ctx: EngageContext,
        *,
        job_id: uuid.UUID,
        reply_message_id: uuid.UUID,
        payload: dict[str, Any],
        prompt_tokens: int,
        completion_tokens: int,
    ) -> Along:
        """`record_reply`'s writes as CTEs that go in the reply's own insert statement (the
        bus's `request_send(along=...)`), so a reply is one round trip, written only when the
        send row is created."""
        event = {
            "job_id": str(job_id),
            "message_id": str(ctx.message_id),
            "reply_message_id": str(reply_message_id),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            **payload,
        }
        return Along(
            """
            ev AS (
                INSERT INTO events (company_id, lead_id, type, payload)
                SELECT $A1, $A2, 'ai.reply_generated', $A3::jsonb FROM sent),
            sess AS (
                INSERT INTO ai_sessions (company_id, lead_id, turns, context)
                SELECT $A1, $A2, 1, $A4::jsonb FROM sent
                ON CONFLICT (lead_id) DO UPDATE
                   SET turns = ai_sessions.turns + 1, updated_at = now(),
                       context = ai_sessions.context || EXCLUDED.context || jsonb_build_object(
                           'prompt_tokens',
                           coalesce((ai_sessions.context->>'prompt_tokens')::bigint, 0)
                           + $A5::bigint,
                           'completion_tokens',
                           coalesce((ai_sessions.context->>'completion_tokens')::bigint, 0)
                           + $A6::bigint))
            """,
            (
                ctx.company_id,
                ctx.lead_id,
                event,
                _session_context(ctx, reply_message_id, payload, prompt_tokens, completion_tokens),
                prompt_tokens,
                completion_tokens,
            ),
        )

    @staticmethod
    async def cancel_followups(conn: asyncpg.Connection | asyncpg.Pool, lead_id: uuid.UUID) -> int:
        """Cancel the lead's pending bump-up timers: the lead is talking again."""
        status = await conn.execute(
            "UPDATE timers SET status = 'cancelled', reason = 'lead replied'"
            " WHERE lead_id = $1 AND status = 'pending' AND task_name = 'followup.bumpup'",
            lead_id,
        )
        return int(status.rsplit(" ", 1)[1])

    # --- ai.summary ---

    async def load_conversation(self, lead_id: uuid.UUID, limit: int) -> Conversation | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"""
                SELECT {_LEAD_COLUMNS}, last.id AS last_id, last.created_at AS last_at
                FROM leads l
                {_LEAD_JOINS}
                LEFT JOIN LATERAL (
                    SELECT id, created_at FROM messages
                    WHERE lead_id = l.id AND status <> ALL($2::text[])
                    ORDER BY created_at DESC, id DESC LIMIT 1) last ON true
                WHERE l.id = $1
                """,
                lead_id,
                list(_DEAD_STATUSES),
            )
            if row is None:
                return None
            turns = await _recent_turns(conn, lead_id, limit)
        return Conversation(
            _lead(row, lead_id), _config(row), turns, row["last_id"], row["last_at"]
        )

    async def save_summary(
        self, lead: LeadFacts, summary: dict[str, Any], event: dict[str, Any]
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                WITH ev AS (
                    INSERT INTO events (company_id, lead_id, type, payload)
                    VALUES ($1, $2, 'lead.summary_updated', $4))
                UPDATE leads
                   SET attributes = attributes || jsonb_build_object('summary', $3::jsonb),
                       updated_at = now()
                WHERE id = $2
                """,
                lead.company_id,
                lead.lead_id,
                summary,
                event,
            )

    # --- followup.bumpup ---

    async def load_bumpup_state(self, lead_id: uuid.UUID, turns: int) -> BumpupState | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"""
                SELECT {_LEAD_COLUMNS}, last.direction AS last_direction,
                       last.created_at AS last_at, wa.channel AS wa_channel,
                       (SELECT count(*) FROM messages f
                         WHERE f.lead_id = l.id AND f.direction = 'outbound'
                           AND f.meta->>'purpose' = 'followup'
                           AND f.status <> ALL($2::text[])
                           AND f.created_at > coalesce(
                               (SELECT max(created_at) FROM messages i
                                 WHERE i.lead_id = l.id AND i.direction = 'inbound'),
                               '-infinity')) AS unanswered
                FROM leads l
                {_LEAD_JOINS}
                LEFT JOIN LATERAL (
                    SELECT direction, created_at FROM messages
                    WHERE lead_id = l.id AND status <> ALL($2::text[])
                    ORDER BY created_at DESC, id DESC LIMIT 1) last ON true
                LEFT JOIN LATERAL (
                    SELECT channel FROM messages
                    WHERE lead_id = l.id AND channel = ANY($3::text[])
                    ORDER BY created_at DESC, id DESC LIMIT 1) wa ON true
                WHERE l.id = $1
                """,
                lead_id,
                list(_DEAD_STATUSES),
                list(WHATSAPP),
            )
            if row is None:
                return None
            recent = await _recent_turns(conn, lead_id, turns)
        lead = _lead(row, lead_id)
        followup = lead.attributes.get("followup")
        sent = int(followup.get("count", 0)) if isinstance(followup, dict) else 0
        return BumpupState(
            lead=lead,
            config=_config(row),
            last_direction=row["last_direction"],
            last_message_at=row["last_at"],
            whatsapp_channel=row["wa_channel"],
            sent=sent,
            unanswered=row["unanswered"],
            turns=recent,
        )

    @staticmethod
    async def record_bumpup(
        conn: asyncpg.Connection,
        lead: LeadFacts,
        *,
        number: int,
        message_id: uuid.UUID,
        job_id: uuid.UUID,
        event: dict[str, Any],
    ) -> None:
        """Count the bump-up on the lead and log it, in the send request's transaction."""
        await conn.execute(
            """
            WITH ev AS (
                INSERT INTO events (company_id, lead_id, type, payload)
                VALUES ($1, $2, 'followup.bumpup_sent', $6))
            UPDATE leads
               SET attributes = attributes || jsonb_build_object('followup',
                       coalesce(attributes->'followup', '{}'::jsonb) || jsonb_build_object(
                           'count', $3::int, 'last_at', now(),
                           'last_message_id', $4::uuid, 'last_job_id', $5::uuid)),
                   updated_at = now()
             WHERE id = $2
            """,
            lead.company_id,
            lead.lead_id,
            number,
            message_id,
            job_id,
            event,
        )
