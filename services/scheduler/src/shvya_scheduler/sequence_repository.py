"""The step handler's SQL: the enrolment it runs, the lead as steps see it, what conditions ask
(replies, email engagement), stage moves, and the last moment of a conversation. Every method
runs on the caller's connection, inside the handler's unit of work."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from shvya_common.contracts.events import EventType
from shvya_common.sequences.enrolments import ENROLMENT_COLUMNS

# Mail that answers itself (out-of-office, another bot) is filed with meta.auto_reply: not a reply.
_REPLIED = """
SELECT EXISTS (
    SELECT 1 FROM messages
    WHERE lead_id = $1 AND direction = 'inbound' AND created_at > $2
      AND NOT (meta ? 'auto_reply'))
"""

# The conversation: what the lead wrote and what we answered, not marketing we sent.
_LAST_CONVERSATION = """
SELECT max(created_at) FROM messages
WHERE lead_id = $1
  AND (direction = 'inbound' OR coalesce(meta->>'purpose', 'reply') <> 'marketing')
  AND NOT (direction = 'inbound' AND meta ? 'auto_reply')
"""

# email.opened / email.clicked on a message this enrolment's steps sent (hot or archived).
_ENGAGED = """
SELECT EXISTS (
    SELECT 1 FROM sequence_history h
    JOIN events_all ev ON ev.lead_id = $2 AND ev.type = $3
                  AND ev.payload->>'message_id' = h.message_id::text
    WHERE h.enrolment_id = $1 AND h.message_id IS NOT NULL
      AND ($4 OR NOT coalesce((ev.payload->>'machine')::boolean, false)))
"""

_LEAD = """
SELECT l.id, l.company_id, l.pipeline_id, l.stage_id, l.phone_e164, l.email, l.contact_name,
       l.timezone, l.attributes, s.name AS stage, c.name AS company_name,
       c.timezone AS company_timezone
FROM leads l JOIN companies c ON c.id = l.company_id
LEFT JOIN stages s ON s.id = l.stage_id
WHERE l.id = $1
"""

# A stage of the lead's pipeline; a lead with none may take one of any of the company's
# pipelines, its default pipeline first.
_STAGE = """
SELECT st.id, st.name, st.pipeline_id FROM stages st JOIN pipelines p ON p.id = st.pipeline_id
WHERE p.company_id = $1 AND lower(st.name) = lower($2) AND ($3::uuid IS NULL OR p.id = $3)
ORDER BY p.is_default DESC, p.created_at, st.position
LIMIT 1
"""


class StepRepository:
    @staticmethod
    async def enrolment_head(
        conn: asyncpg.Connection, enrolment_id: uuid.UUID
    ) -> asyncpg.Record | None:
        """The company and sequence of an enrolment (they never change), read without a lock."""
        row: asyncpg.Record | None = await conn.fetchrow(
            "SELECT company_id, sequence_id FROM sequence_enrolments WHERE id = $1", enrolment_id
        )
        return row

    @staticmethod
    async def lock_enrolment(conn: asyncpg.Connection, enrolment_id: uuid.UUID) -> asyncpg.Record:
        row: asyncpg.Record | None = await conn.fetchrow(
            f"SELECT {ENROLMENT_COLUMNS} FROM sequence_enrolments WHERE id = $1 FOR UPDATE",
            enrolment_id,
        )
        assert row is not None  # enrolments are deleted only with their sequence or lead
        return row

    @staticmethod
    async def lead(conn: asyncpg.Connection, lead_id: uuid.UUID) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await conn.fetchrow(_LEAD, lead_id)
        return row

    @staticmethod
    async def replied_since(conn: asyncpg.Connection, lead_id: uuid.UUID, since: datetime) -> bool:
        return bool(await conn.fetchval(_REPLIED, lead_id, since))

    @staticmethod
    async def last_conversation_at(conn: asyncpg.Connection, lead_id: uuid.UUID) -> datetime | None:
        value: datetime | None = await conn.fetchval(_LAST_CONVERSATION, lead_id)
        return value

    @staticmethod
    async def email_engaged(
        conn: asyncpg.Connection,
        enrolment_id: uuid.UUID,
        lead_id: uuid.UUID,
        kind: EventType,
        include_machine: bool,
    ) -> bool:
        return bool(
            await conn.fetchval(_ENGAGED, enrolment_id, lead_id, kind.value, include_machine)
        )

    @staticmethod
    async def template(
        conn: asyncpg.Connection, company_id: uuid.UUID, template_id: uuid.UUID
    ) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await conn.fetchrow(
            "SELECT id, name, channel, body FROM templates WHERE id = $1 AND company_id = $2",
            template_id,
            company_id,
        )
        return row

    @staticmethod
    async def find_stage(
        conn: asyncpg.Connection, company_id: uuid.UUID, name: str, pipeline_id: uuid.UUID | None
    ) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await conn.fetchrow(_STAGE, company_id, name, pipeline_id)
        return row

    @staticmethod
    async def set_stage(
        conn: asyncpg.Connection, lead_id: uuid.UUID, stage_id: uuid.UUID, pipeline_id: uuid.UUID
    ) -> bool:
        """Put the lead in the stage; False when it was there already."""
        changed = await conn.fetchval(
            "UPDATE leads SET stage_id = $2, pipeline_id = $3, updated_at = now()"
            " WHERE id = $1 AND stage_id IS DISTINCT FROM $2 RETURNING id",
            lead_id,
            stage_id,
            pipeline_id,
        )
        return changed is not None

    @staticmethod
    async def advance(
        conn: asyncpg.Connection,
        enrolment_id: uuid.UUID,
        step_id: uuid.UUID | None,
        due: datetime,
    ) -> int:
        """The enrolment waits for `step_id` until `due`, as a new run; returns that run."""
        run: int = await conn.fetchval(
            "UPDATE sequence_enrolments SET current_step_id = $2, next_run_at = $3,"
            " run = run + 1, updated_at = now() WHERE id = $1 RETURNING run",
            enrolment_id,
            step_id,
            due,
        )
        return run

    @staticmethod
    async def complete(conn: asyncpg.Connection, enrolment_id: uuid.UUID) -> None:
        await conn.execute(
            "UPDATE sequence_enrolments SET status = 'completed', current_step_id = NULL,"
            " next_run_at = NULL, finished_at = now(), updated_at = now() WHERE id = $1",
            enrolment_id,
        )

    @staticmethod
    async def resume(conn: asyncpg.Connection, enrolment_id: uuid.UUID) -> asyncpg.Record:
        row: asyncpg.Record | None = await conn.fetchrow(
            "UPDATE sequence_enrolments SET status = 'active', paused_at = NULL,"
            f" resumed_at = now(), updated_at = now() WHERE id = $1 RETURNING {ENROLMENT_COLUMNS}",
            enrolment_id,
        )
        assert row is not None
        return row

    @staticmethod
    async def bump_run(conn: asyncpg.Connection, enrolment_id: uuid.UUID) -> int:
        run: int = await conn.fetchval(
            "UPDATE sequence_enrolments SET run = run + 1, updated_at = now() WHERE id = $1"
            " RETURNING run",
            enrolment_id,
        )
        return run


def lead_fields(row: asyncpg.Record) -> tuple[dict[str, Any], dict[str, Any]]:
    """The lead and company mappings `shvya_common.render.lead_context` takes."""
    lead = {
        k: row[k]
        for k in ("id", "contact_name", "phone_e164", "email", "stage", "timezone", "attributes")
    }
    company = {"name": row["company_name"], "timezone": row["company_timezone"]}
    return lead, company
