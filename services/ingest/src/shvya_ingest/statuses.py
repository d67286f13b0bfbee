"""Delivery statuses reported by a provider, applied to outbound messages in one statement.

Each (provider id, status) is stored once in `provider_statuses`, so a retried webhook changes
nothing. A new status moves its message's `delivery_status` only forwards (sent < failed <
delivered < read, see `delivery_rank` in migration 0003) and writes one event. A status whose
message does not carry the provider id yet (the webhook beat dispatch's commit) is kept pending;
the database trigger applies it when the id arrives. Both sides hold the same per-id advisory
lock, so no status slips between the two. New failures of known messages are returned, for the
status policy (`status_policy`) to act on, unless the message was already delivered or read (a
late 'failed' acted on would send it twice). A failure the trigger applies late is marked due
for the policy by the trigger itself (`policy_due_at`, migration 0021, by the same rule), and
`late_failures` acts on it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from shvya_ingest.meta_payload import StatusReport

# Locks taken in the order of their keys, so two batches sharing ids cannot deadlock.
_LOCK = """
SELECT provider_id_lock(pid)
FROM (SELECT pid FROM (SELECT DISTINCT pid FROM unnest($1::text[]) AS u(pid)) AS d
      ORDER BY hashtext(pid)) AS ids
"""

_APPLY = """
WITH input AS (
    -- errors travel as JSON text: asyncpg would read a list of lists as a 2-D array.
    SELECT * FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                         $7::text[])
        AS s(pid, status, status_at, recipient, errors, error_text)
), target AS (
    SELECT m.id, m.company_id, m.lead_id, m.provider_message_id, m.delivery_status
    FROM messages m
    WHERE m.direction = 'outbound' AND m.channel = $1
      AND m.provider_message_id IN (SELECT pid FROM input)
), fresh AS (
    INSERT INTO provider_statuses (channel, provider_message_id, status, status_at, recipient,
                                   errors, error_text, message_id)
    SELECT $1, i.pid, i.status, i.status_at, i.recipient, i.errors::jsonb, i.error_text, t.id
    FROM input i LEFT JOIN target t ON t.provider_message_id = i.pid
    ON CONFLICT (channel, provider_message_id, status) DO NOTHING
    RETURNING provider_message_id, status, status_at, errors, message_id, error_text
), agg AS (
    SELECT message_id, max(delivery_rank(status)) AS best_rank,
           min(status_at) FILTER (WHERE status = 'delivered') AS delivered_at,
           min(status_at) FILTER (WHERE status = 'read') AS read_at,
           (array_agg(error_text) FILTER (WHERE status = 'failed'))[1] AS failed_error,
           bool_or(status = 'failed') AS failed
    FROM fresh WHERE message_id IS NOT NULL GROUP BY message_id
), updated AS (
    UPDATE messages m SET
        delivery_status = CASE WHEN agg.best_rank > delivery_rank(m.delivery_status)
                               THEN (ARRAY['sent', 'failed', 'delivered', 'read'])[agg.best_rank]
                               ELSE m.delivery_status END,
        -- A read message was delivered, even if that status never came.
        delivered_at = LEAST(m.delivered_at, agg.delivered_at, agg.read_at),
        read_at = LEAST(m.read_at, agg.read_at),
        delivery_error = CASE WHEN agg.failed THEN agg.failed_error ELSE m.delivery_error END,
        updated_at = now()
    FROM agg WHERE m.id = agg.message_id
    RETURNING m.id
), event AS (
    INSERT INTO events (company_id, lead_id, type, payload)
    SELECT t.company_id, t.lead_id,
           CASE f.status WHEN 'sent' THEN 'message.provider_sent'
                         WHEN 'delivered' THEN 'message.delivered'
                         WHEN 'read' THEN 'message.read'
                         ELSE 'message.delivery_failed' END,
           jsonb_build_object('message_id', t.id, 'channel', $1,
                              'provider_message_id', f.provider_message_id, 'status', f.status,
                              'status_at', f.status_at, 'errors', f.errors, 'late_match', false)
    FROM fresh f JOIN target t ON t.id = f.message_id
)
SELECT (SELECT count(*) FROM fresh) AS new,
       (SELECT count(*) FROM fresh WHERE message_id IS NULL) AS pending,
       (SELECT count(*) FROM updated) AS messages,
       -- New failures of known messages: the status policy acts on each, once. Not of a
       -- message the phone already reported delivered or read (before or in this batch): a
       -- late or out-of-order 'failed' is recorded, but a resend or a fallback template would
       -- reach the customer a second time.
       (SELECT coalesce(jsonb_agg(jsonb_build_object('message_id', f.message_id,
                                                     'errors', f.errors,
                                                     'status_at', f.status_at)), '[]'::jsonb)
        FROM fresh f JOIN target t ON t.id = f.message_id
        WHERE f.status = 'failed'
          AND delivery_rank(t.delivery_status) < delivery_rank('delivered')
          AND NOT EXISTS (SELECT 1 FROM fresh g WHERE g.message_id = f.message_id
                                                  AND g.status IN ('delivered', 'read'))
       ) AS failures
"""


@dataclass(frozen=True)
class Failure:
    """A failed status seen for the first time, of a message we sent."""

    message_id: uuid.UUID
    errors: list[dict[str, Any]]
    status_at: datetime


@dataclass(frozen=True)
class StatusOutcome:
    received: int
    new: int
    pending: int
    messages: int
    failures: list[Failure] = field(default_factory=list)


async def lock_provider_ids(conn: asyncpg.Connection, ids: Sequence[str]) -> None:
    """Take the per-id locks the trigger takes, until the caller's transaction ends."""
    await conn.execute(_LOCK, list(ids))


async def apply_statuses(
    conn: asyncpg.Connection, channel: str, reports: Sequence[StatusReport]
) -> StatusOutcome:
    """Store and apply `reports` in the caller's transaction: two statements for any number."""
    if not reports:
        return StatusOutcome(0, 0, 0, 0)
    ids = [r.provider_message_id for r in reports]
    await lock_provider_ids(conn, ids)
    # A separate statement: its snapshot is taken after the locks, so it sees any message that
    # got its provider id while we waited.
    row = await conn.fetchrow(
        _APPLY,
        channel,
        ids,
        [r.status for r in reports],
        [r.status_at for r in reports],
        [r.recipient for r in reports],
        [json.dumps(r.errors) for r in reports],
        [r.error_text for r in reports],
    )
    assert row is not None
    failures = [
        Failure(
            uuid.UUID(f["message_id"]), f["errors"] or [], datetime.fromisoformat(f["status_at"])
        )
        for f in row["failures"]
    ]
    return StatusOutcome(len(reports), row["new"], row["pending"], row["messages"], failures)
