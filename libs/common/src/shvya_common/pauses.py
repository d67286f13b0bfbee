"""Channel pauses: one company's sends on one channel held back because the provider refused
the sender itself (expired token, policy or spam block, account problem).

The one writer of `channel_pauses`. Dispatch starts a pause when a send is refused; ingest when
a delivery status reports an account-level failure. A pause is (re)started only when none is in
force, so concurrent refusals write one `channel.paused` event.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

_START_PAUSE = """
INSERT INTO channel_pauses AS p (company_id, channel, error_code, reason, paused_at, paused_until,
                                 credential_fingerprint, resumed_at)
VALUES ($1, $2, $3, $4, now(), now() + make_interval(secs => $5::float8), $6, NULL)
ON CONFLICT (company_id, channel) DO UPDATE
   SET error_code = EXCLUDED.error_code, reason = EXCLUDED.reason, paused_at = now(),
       paused_until = EXCLUDED.paused_until,
       credential_fingerprint = EXCLUDED.credential_fingerprint, resumed_at = NULL
 WHERE p.resumed_at IS NOT NULL
    OR p.paused_until <= now()
    OR (p.credential_fingerprint IS NOT NULL AND p.credential_fingerprint IS DISTINCT FROM $7)
RETURNING now() AS now, paused_until
"""


async def start_pause(
    conn: asyncpg.Connection,
    company_id: uuid.UUID,
    channel: str,
    code: int,
    reason: str,
    pause_seconds: float | None,
    fingerprint: str | None,
    current_fingerprint: str | None,
    lead_id: uuid.UUID | None,
    message_id: uuid.UUID | None,
) -> dict[str, Any]:
    """Pause the channel for the company unless a pause is already in force, in the caller's
    transaction; returns {now, paused_until, created}. A new pause writes one `channel.paused`
    event.

    `fingerprint` binds the pause to the refused credentials; `current_fingerprint` is what the
    channel runs with now (a pause bound to other credentials is no longer in force)."""
    row = await conn.fetchrow(
        _START_PAUSE,
        company_id,
        channel,
        code,
        reason[:2000],
        pause_seconds,
        fingerprint,
        current_fingerprint,
    )
    if row is not None:
        await conn.execute(
            "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, NULL,"
            " 'channel.paused', jsonb_build_object('channel', $2::text, 'code', $3::int,"
            " 'reason', $4::text, 'paused_until', $5::timestamptz,"
            " 'lead_id', $6::uuid, 'message_id', $7::uuid))",
            company_id,
            channel,
            code,
            reason[:2000],
            row["paused_until"],
            lead_id,
            message_id,
        )
        return {"now": row["now"], "paused_until": row["paused_until"], "created": True}
    current = await conn.fetchrow(
        "SELECT now() AS now, paused_until FROM channel_pauses"
        " WHERE company_id = $1 AND channel = $2",
        company_id,
        channel,
    )
    assert current is not None
    return {"now": current["now"], "paused_until": current["paused_until"], "created": False}
