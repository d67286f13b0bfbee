"""Dispatch's SQL: events, what the email channel reads and writes (subjects, hard-bounce
suppressions), and the policy engine's state (suppressions, channel pauses, pacing slots,
templates). The send's own status is the job bus's to write (`SendLedger`), not this module's."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from shvya_common import pauses
from shvya_common.whatsapp.templates import WHATSAPP_TEMPLATE_CHANNELS
from shvya_dispatch.channels.email import EmailContext, Thread


class DispatchRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add_event(
        self, company_id: uuid.UUID, lead_id: uuid.UUID | None, kind: str, payload: dict[str, Any]
    ) -> None:
        await self.pool.execute(
            "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2, $3, $4)",
            company_id,
            lead_id,
            kind,
            payload,
        )


class EmailRepository:
    """The email channel's reads and writes: subjects, threads and DKIM keys, hard bounces."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def email_context(
        self,
        company_id: uuid.UUID,
        template_id: uuid.UUID | None,
        reply_to_message_id: uuid.UUID | None = None,
        domain: str | None = None,
    ) -> EmailContext:
        """Subjects, the message a reply answers (only an inbound email that came with a
        Message-ID), the company's open-tracking choice for replies and its DKIM key for
        `domain`, in one round trip."""
        row = await self.pool.fetchrow(
            "SELECT c.name, c.settings->>'email_subject' AS company_subject,"
            " t.subject AS template_subject,"
            " COALESCE((c.settings->>'email_reply_open_tracking')::boolean, false)"
            " AS reply_open_tracking,"
            " m.meta->>'message_id' AS parent_id, m.meta->'references' AS parent_references,"
            " m.meta->>'in_reply_to' AS parent_in_reply_to, m.meta->>'subject' AS parent_subject,"
            " k.selector AS dkim_selector, k.private_key AS dkim_private_key"
            " FROM companies c"
            " LEFT JOIN templates t ON t.id = $2 AND t.company_id = c.id"
            " LEFT JOIN messages m ON m.id = $3 AND m.company_id = c.id"
            " AND m.direction = 'inbound' AND m.channel = 'email'"
            " LEFT JOIN email_dkim_keys k ON k.company_id = c.id AND k.domain = $4"
            " WHERE c.id = $1",
            company_id,
            template_id,
            reply_to_message_id,
            domain,
        )
        if row is None:
            return EmailContext()
        thread = None
        if row["parent_id"]:
            references = row["parent_references"]
            thread = Thread(
                message_id=f"<{row['parent_id']}>",
                references=tuple(str(r) for r in references)
                if isinstance(references, list)
                else (),
                in_reply_to=f"<{row['parent_in_reply_to']}>" if row["parent_in_reply_to"] else None,
                subject=row["parent_subject"],
            )
        return EmailContext(
            company_name=row["name"],
            company_subject=row["company_subject"],
            template_subject=row["template_subject"],
            reply_open_tracking=row["reply_open_tracking"],
            thread=thread,
            dkim_selector=row["dkim_selector"],
            dkim_private_key=row["dkim_private_key"],
        )

    async def suppress_address(
        self, company_id: uuid.UUID, lead_id: uuid.UUID, address: str, reason: str
    ) -> None:
        """Suppress `address` on email for every purpose, and record the bounce as an event."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO suppressions (company_id, channel, address, scope, reason)"
                " VALUES ($1, 'email', $2, 'all', $3)"
                " ON CONFLICT (company_id, channel, address, scope) DO NOTHING",
                company_id,
                address,
                reason,
            )
            await conn.execute(
                "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2,"
                " 'email.hard_bounce', jsonb_build_object('address', $3::text,"
                " 'reason', $4::text))",
                company_id,
                lead_id,
                address,
                reason,
            )


# Takes the pacing slot when it is free: past its gap, no live lease, and (with a cap) not full
# today. Concurrent callers serialise on the row, and the loser's WHERE sees the winner's lease.
_RESERVE_SLOT = """
INSERT INTO send_pacing AS p (company_id, channel, pacing_key, next_allowed_at, lease_until,
                              lease_message_id, day, day_count, updated_at)
VALUES ($1, $2, $3, now(), now() + make_interval(secs => $5::float8), $4,
        (now() AT TIME ZONE $6)::date, 1, now())
ON CONFLICT (company_id, channel, pacing_key) DO UPDATE
   SET lease_until = EXCLUDED.lease_until,
       lease_message_id = EXCLUDED.lease_message_id,
       day_count = CASE WHEN p.day = EXCLUDED.day THEN p.day_count + 1 ELSE 1 END,
       day = EXCLUDED.day,
       updated_at = now()
 WHERE p.next_allowed_at <= now()
   AND (p.lease_until IS NULL OR p.lease_until <= now() OR p.lease_message_id = $4)
   AND ($7::int = 0 OR p.day IS DISTINCT FROM EXCLUDED.day OR p.day_count < $7::int)
RETURNING day_count
"""

_SLOT_STATE = """
SELECT now() AS now, next_allowed_at, lease_until, day, day_count,
       (now() AT TIME ZONE $4)::date AS today,
       (date_trunc('day', now() AT TIME ZONE $4) + interval '1 day') AT TIME ZONE $4 AS next_day
FROM send_pacing WHERE company_id = $1 AND channel = $2 AND pacing_key = $3
"""

# A send's policy inputs in one round trip: the database clock, the lead's window and zone,
# the company's zone and settings, the newest suppression binding the recipient, and the
# company's pause in force on the channel (for the credentials it sends with now, $7).
#
# The lead is looked up by its id alone and its company tested on the row: with both tests
# beside each other the generic plan could take an index that starts with the company
# (leads_company_activity, with the id as its last column) and read every lead of the company
# for each send.
_SEND_STATE = """
SELECT now() AS now, l.last_inbound_at, l.timezone AS lead_timezone,
       l.whatsapp_undeliverable_at AS undeliverable_at,
       l.whatsapp_undeliverable_reason AS undeliverable_reason,
       c.timezone AS company_timezone, c.settings AS company_settings,
       s.channel AS suppressed_channel, s.scope AS suppressed_scope,
       s.reason AS suppressed_reason, s.created_at AS suppressed_at,
       p.reason AS pause_reason, p.paused_until, p.paused_at AS pause_started
FROM (SELECT company_id, last_inbound_at, timezone, whatsapp_undeliverable_at,
             whatsapp_undeliverable_reason FROM leads WHERE id = $2 LIMIT 1) l
JOIN companies c ON c.id = l.company_id
LEFT JOIN LATERAL (
    SELECT channel, scope, reason, created_at FROM suppressions
    WHERE company_id = $1 AND channel = ANY($3::text[])
      AND lower(address) = lower($4) AND scope = ANY($5::text[])
    ORDER BY created_at DESC LIMIT 1) s ON true
LEFT JOIN LATERAL (
    SELECT reason, paused_at, paused_until FROM channel_pauses
    WHERE company_id = $1 AND channel = $6 AND resumed_at IS NULL
      AND (paused_until IS NULL OR paused_until > now())
      AND (credential_fingerprint IS NULL OR credential_fingerprint = $7)
    LIMIT 1) p ON $8
WHERE l.company_id = $1
"""


class PolicyRepository:
    """The policy engine's reads and writes: send context, suppressions, pauses, pacing slots,
    and the templates a send may use."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def send_state(
        self,
        company_id: uuid.UUID,
        lead_id: uuid.UUID,
        *,
        channels: list[str],
        address: str,
        scopes: list[str],
        channel: str,
        fingerprint: str | None,
        with_pause: bool = True,
    ) -> asyncpg.Record | None:
        """The lead's window, zone and WhatsApp undeliverable flag, the company's zone and
        settings, the suppression binding
        `address` on `channels` (newest first) and, with `with_pause`, the pause in force."""
        return await self.pool.fetchrow(
            _SEND_STATE,
            company_id,
            lead_id,
            channels,
            address.strip(),
            scopes,
            channel,
            fingerprint,
            with_pause,
        )

    async def company_settings(self, company_id: uuid.UUID) -> dict[str, Any]:
        settings = await self.pool.fetchval(
            "SELECT settings FROM companies WHERE id = $1", company_id
        )
        return settings or {}

    async def suppress_recipient(
        self,
        company_id: uuid.UUID,
        lead_id: uuid.UUID,
        channel: str,
        address: str,
        scope: str,
        reason: str,
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                "INSERT INTO suppressions (company_id, channel, address, scope, reason)"
                " VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (company_id, channel, address, scope) DO NOTHING RETURNING id",
                company_id,
                channel,
                address.strip(),
                scope,
                reason[:2000],
            )
            if created is not None:
                await conn.execute(
                    "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2,"
                    " 'lead.suppressed', jsonb_build_object('channel', $3::text,"
                    " 'scope', $4::text, 'reason', $5::text))",
                    company_id,
                    lead_id,
                    channel,
                    scope,
                    reason[:2000],
                )

    async def start_pause(
        self,
        company_id: uuid.UUID,
        channel: str,
        code: int,
        reason: str,
        pause_seconds: float | None,
        fingerprint: str | None,
        current_fingerprint: str | None,
        lead_id: uuid.UUID,
        message_id: uuid.UUID,
    ) -> dict[str, Any]:
        """Pause the channel for the company unless a pause is already in force; returns
        {now, paused_until, created}. A new pause writes one `channel.paused` event.

        `fingerprint` binds the pause to the refused credentials; `current_fingerprint` is what
        the channel runs with now (a pause bound to other credentials is no longer in force)."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await pauses.start_pause(
                conn,
                company_id,
                channel,
                code,
                reason,
                pause_seconds,
                fingerprint,
                current_fingerprint,
                lead_id,
                message_id,
            )

    async def list_pauses(self, include_lifted: bool = False) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(
            "SELECT p.company_id, c.name AS company_name, p.channel, p.error_code, p.reason,"
            " p.paused_at, p.paused_until, p.resumed_at, p.credential_fingerprint IS NOT NULL"
            " AS until_credentials_change,"
            " (p.resumed_at IS NULL AND (p.paused_until IS NULL OR p.paused_until > now()))"
            " AS in_force"
            " FROM channel_pauses p JOIN companies c ON c.id = p.company_id"
            " WHERE $1 OR (p.resumed_at IS NULL AND (p.paused_until IS NULL"
            " OR p.paused_until > now()))"
            " ORDER BY p.paused_at",
            include_lifted,
        )
        return rows

    async def lift_pause(self, company_id: uuid.UUID, channel: str, by: str) -> bool:
        """End a pause now; False if none was in force. Writes a `channel.resumed` event."""
        async with self.pool.acquire() as conn, conn.transaction():
            lifted = await conn.fetchval(
                "UPDATE channel_pauses SET resumed_at = now()"
                " WHERE company_id = $1 AND channel = $2 AND resumed_at IS NULL"
                " AND (paused_until IS NULL OR paused_until > now()) RETURNING error_code",
                company_id,
                channel,
            )
            if lifted is None:
                return False
            await conn.execute(
                "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, NULL,"
                " 'channel.resumed', jsonb_build_object('channel', $2::text, 'by', $3::text))",
                company_id,
                channel,
                by,
            )
        return True

    async def approved_whatsapp_template(
        self, company_id: uuid.UUID, name: str, language: str | None
    ) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT id, name FROM templates WHERE company_id = $1 AND name = $2"
            " AND channel = ANY($3::text[]) AND status = 'approved'"
            " AND ($4::text IS NULL OR language = $4) ORDER BY created_at LIMIT 1",
            company_id,
            name,
            list(WHATSAPP_TEMPLATE_CHANNELS),
            language,
        )

    async def template_for_lead(
        self, company_id: uuid.UUID, lead_id: uuid.UUID, template_id: uuid.UUID
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        row = await self.pool.fetchrow(
            "SELECT t.id, t.name, t.language, t.body, t.variables, t.status, t.channel,"
            " l.contact_name, l.phone_e164, l.email, l.attributes, c.name AS company_name"
            " FROM templates t JOIN companies c ON c.id = t.company_id"
            " JOIN leads l ON l.company_id = t.company_id AND l.id = $3"
            " WHERE t.id = $1 AND t.company_id = $2",
            template_id,
            company_id,
            lead_id,
        )
        if row is None:
            return None
        template_keys = ("id", "name", "language", "body", "variables", "status", "channel")
        lead_keys = ("contact_name", "phone_e164", "email", "attributes", "company_name")
        return {k: row[k] for k in template_keys}, {k: row[k] for k in lead_keys}

    async def reserve_slot(
        self,
        company_id: uuid.UUID,
        channel: str,
        key: str,
        message_id: uuid.UUID,
        lease_seconds: float,
        zone: str,
        daily_cap: int,
    ) -> bool:
        taken = await self.pool.fetchval(
            _RESERVE_SLOT, company_id, channel, key, message_id, lease_seconds, zone, daily_cap
        )
        return taken is not None

    async def slot_state(
        self, company_id: uuid.UUID, channel: str, key: str, zone: str
    ) -> asyncpg.Record | None:
        return await self.pool.fetchrow(_SLOT_STATE, company_id, channel, key, zone)

    async def release_slot(
        self, company_id: uuid.UUID, channel: str, key: str, message_id: uuid.UUID
    ) -> None:
        """Give back a slot this send took but did not use (a later limit deferred it): no gap,
        and it does not count towards today's cap."""
        await self.pool.execute(
            "UPDATE send_pacing SET lease_until = NULL, lease_message_id = NULL,"
            " day_count = greatest(day_count - 1, 0), updated_at = now()"
            " WHERE company_id = $1 AND channel = $2 AND pacing_key = $3"
            " AND lease_message_id = $4",
            company_id,
            channel,
            key,
            message_id,
        )

    async def settle_slot(
        self,
        company_id: uuid.UUID,
        channel: str,
        key: str,
        message_id: uuid.UUID,
        gap_seconds: float,
    ) -> None:
        """The send holding the slot is done: the next may go `gap_seconds` from now."""
        await self.pool.execute(
            "UPDATE send_pacing SET next_allowed_at = now() + make_interval(secs => $5::float8),"
            " lease_until = NULL, lease_message_id = NULL, last_sent_at = now(),"
            " updated_at = now()"
            " WHERE company_id = $1 AND channel = $2 AND pacing_key = $3"
            " AND lease_message_id = $4",
            company_id,
            channel,
            key,
            message_id,
            gap_seconds,
        )


async def store_dkim_key(
    pool: asyncpg.Pool,
    company_id: uuid.UUID,
    domain: str,
    selector: str,
    encrypted_key: str,
) -> bool:
    """Save (or replace) a company's DKIM key for `domain`; False if the company is unknown."""
    stored = await pool.fetchval(
        "INSERT INTO email_dkim_keys (company_id, domain, selector, private_key)"
        " SELECT id, $2, $3, $4 FROM companies WHERE id = $1"
        " ON CONFLICT (company_id, domain) DO UPDATE SET selector = EXCLUDED.selector,"
        " private_key = EXCLUDED.private_key, updated_at = now() RETURNING 1",
        company_id,
        domain.lower(),
        selector,
        encrypted_key,
    )
    return stored is not None
