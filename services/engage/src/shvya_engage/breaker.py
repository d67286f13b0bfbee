"""The per-lead reply circuit breaker: a lead that has had more than REPLY_BREAKER_MAX automated
replies within REPLY_BREAKER_WINDOW_SECONDS gets no more until the window has passed.

No person writes a dozen messages an hour that each want an AI answer; another bot does (an
auto-responder that slipped past the auto-reply checks, a ticketing system, a WhatsApp bot), and
each of our answers triggers its next message. Tripping files the inbound message as usual but
sends nothing, and raises one `lead.reply_breaker_open` event per window so an operator sees
it. Only automated sends count: replies and follow-ups, not a human's messages.
"""

from __future__ import annotations

import asyncpg
import structlog

from shvya_engage.repository import EngageContext, recent_replies
from shvya_engage.settings import EngageSettings

log = structlog.get_logger(__name__)

# The same count as ai.engage's read (repository.recent_replies), and the event once a window.
_COUNT_AND_RAISE = f"""
WITH recent AS (
    SELECT ({recent_replies("$1", "$2")}) AS replies
), raised AS (
    INSERT INTO events (company_id, lead_id, type, payload)
    SELECT $3, $1, 'lead.reply_breaker_open',
           jsonb_build_object('replies', recent.replies, 'max', $4::int,
                              'window_seconds', $2::float8, 'message_id', $5::uuid)
    FROM recent
    WHERE recent.replies >= $4
      AND NOT EXISTS (SELECT 1 FROM events WHERE lead_id = $1 AND type = 'lead.reply_breaker_open'
                      AND created_at > now() - make_interval(secs => $2::float8))
    RETURNING id
)
SELECT recent.replies, (SELECT count(*) FROM raised) AS raised FROM recent
"""


async def reply_breaker_open(
    pool: asyncpg.Pool, ctx: EngageContext, settings: EngageSettings
) -> bool:
    """True when the lead has had its fill of automated replies in the window (and the event
    is raised, once per window)."""
    limit = settings.reply_breaker_max
    if limit <= 0:
        return False
    row = await pool.fetchrow(
        _COUNT_AND_RAISE,
        ctx.lead_id,
        settings.reply_breaker_window_seconds,
        ctx.company_id,
        limit,
        ctx.message_id,
    )
    assert row is not None
    if row["replies"] < limit:
        return False
    log.warning("reply_breaker_open", replies=row["replies"], max=limit, raised=bool(row["raised"]))
    return True
