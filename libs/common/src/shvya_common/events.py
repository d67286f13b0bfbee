"""Writing the audit trail: one typed function, so event types come only from the contracts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
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


async def record_events(
    conn: asyncpg.Connection,
    kind: EventType,
    rows: Sequence[tuple[uuid.UUID | None, uuid.UUID | None, dict[str, Any]]],
) -> None:
    """Append many events of one type, (company_id, lead_id, payload) each, in the caller's
    transaction (one pipelined batch, not one round trip per event)."""
    if rows:
        await conn.executemany(
            "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2, $3, $4)",
            [(company, lead, EventType(kind).value, payload) for company, lead, payload in rows],
        )
