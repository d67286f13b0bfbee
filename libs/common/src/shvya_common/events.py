"""Writing the audit trail: one typed function, so event types come only from the contracts."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from shvya_common.contracts.events import EventType


async def record_event(
    conn: asyncpg.Connection | asyncpg.Pool,
    company_id: uuid.UUID | None,
    lead_id: uuid.UUID | None,
    kind: EventType,
    payload: dict[str, Any],
) -> None:
    """Append one event, in the caller's transaction when given a connection."""
    await conn.execute(
        "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2, $3, $4)",
        company_id,
        lead_id,
        EventType(kind).value,
        payload,
    )
