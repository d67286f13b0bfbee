"""Ingest's SQL for email: which conversation a reply belongs to, recording bounces (with their
suppressions and delivery failures), and the IMAP mailboxes it reads."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg

from shvya_common.emailfacts import our_message_uuid
from shvya_ingest.meta_payload import StatusReport
from shvya_ingest.statuses import apply_statuses

CHANNEL = "email"
# Soft bounces are counted over this window (reported with each soft bounce event).
SOFT_BOUNCE_WINDOW_DAYS = 30


@dataclass(frozen=True)
class ThreadMatch:
    """An earlier email of a conversation that a new mail refers to."""

    company_id: uuid.UUID
    lead_id: uuid.UUID
    lead_email: str | None
    message_id: uuid.UUID
    reference: str


@dataclass(frozen=True)
class BounceTarget:
    """The outbound message (and so the company and lead) a bounce is about."""

    company_id: uuid.UUID
    lead_id: uuid.UUID | None
    message_id: uuid.UUID | None
    provider_message_id: str | None


@dataclass(frozen=True)
class Mailbox:
    id: uuid.UUID
    company_id: uuid.UUID
    host: str
    port: int
    security: Literal["tls", "none"]
    username: str
    password: str
    folder: str
    after_filing: Literal["flag", "move"]
    filed_folder: str | None
    since: datetime


_FIND_OUTBOUND = """
SELECT m.id, m.company_id, m.lead_id, l.email, m.provider_message_id
FROM messages m JOIN leads l ON l.id = m.lead_id
WHERE m.channel = 'email' AND m.direction = 'outbound'
  AND (m.provider_message_id = ANY($1::text[]) OR m.provider_message_id = ANY($2::text[])
       OR m.id = ANY($3::uuid[]))
  AND ($4::uuid IS NULL OR m.company_id = $4)
"""

_FIND_INBOUND = """
SELECT m.id, m.company_id, m.lead_id, l.email, m.provider_message_id
FROM messages m JOIN leads l ON l.id = m.lead_id
WHERE m.company_id = $1 AND m.channel = 'email' AND m.direction = 'inbound'
  AND m.provider_message_id = ANY($2::text[])
"""


class MailRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def find_thread(
        self, references: list[str], company_id: uuid.UUID | None
    ) -> ThreadMatch | None:
        """The message among `references` (bare Message-IDs, most relevant first) that we know,
        within `company_id` when it is fixed; outbound mail first, then the lead's own."""
        if not references:
            return None
        bracketed = [f"<{r}>" for r in references]
        ours = [u for u in (our_message_uuid(r) for r in references) if u is not None]
        rows = await self.pool.fetch(_FIND_OUTBOUND, references, bracketed, ours, company_id)
        if not rows and company_id is not None:
            rows = await self.pool.fetch(_FIND_INBOUND, company_id, references)
        if not rows:
            return None
        by_ref: dict[str, asyncpg.Record] = {}
        for row in rows:
            pid = (row["provider_message_id"] or "").strip("<>")
            by_ref.setdefault(pid, row)
            by_ref.setdefault(f"id:{row['id']}", row)
        for ref in references:
            our = our_message_uuid(ref)
            row = by_ref.get(ref) or (by_ref.get(f"id:{our}") if our else None)
            if row is not None:
                return ThreadMatch(row["company_id"], row["lead_id"], row["email"], row["id"], ref)
        return None

    async def bounce_target(
        self, original_message_id: str | None, address: str, company_id: uuid.UUID | None
    ) -> BounceTarget | None:
        """Our message the bounce returns (by its Message-ID), else our latest email to the
        address, else a lead with that address in `company_id`."""
        if original_message_id:
            match = await self.find_thread([original_message_id], company_id)
            if match is not None:
                pid = await self.pool.fetchval(
                    "SELECT provider_message_id FROM messages WHERE id = $1", match.message_id
                )
                return BounceTarget(match.company_id, match.lead_id, match.message_id, pid)
        row = await self.pool.fetchrow(
            "SELECT id, company_id, lead_id, provider_message_id FROM messages"
            " WHERE direction = 'outbound' AND channel = 'email'"
            " AND lower(recipient) = lower($1) AND ($2::uuid IS NULL OR company_id = $2)"
            " ORDER BY created_at DESC LIMIT 1",
            address,
            company_id,
        )
        if row is not None:
            return BounceTarget(
                row["company_id"], row["lead_id"], row["id"], row["provider_message_id"]
            )
        if company_id is None:
            return None
        lead_id = await self.pool.fetchval(
            "SELECT id FROM leads WHERE company_id = $1 AND lower(email) = lower($2)",
            company_id,
            address,
        )
        return BounceTarget(company_id, lead_id, None, None) if lead_id else None

    async def record_bounce(
        self,
        target: BounceTarget,
        *,
        address: str,
        kind: Literal["hard", "soft"],
        status: str | None,
        diagnostic: str | None,
        dsn_message_id: str,
    ) -> dict[str, Any] | None:
        """Record one bounced recipient once. A hard bounce suppresses the address on email for
        the company and marks the message's delivery failed; a soft one is counted. Returns the
        event payload written, or None for a bounce already recorded."""
        reason = " ".join(f"{status or ''} {diagnostic or ''}".split())[:500] or "bounced"
        async with self.pool.acquire() as conn, conn.transaction():
            new = await conn.fetchval(
                "INSERT INTO email_bounces (company_id, lead_id, message_id, address, kind,"
                " status, diagnostic, dsn_message_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (company_id, dsn_message_id, address) DO NOTHING RETURNING id",
                target.company_id,
                target.lead_id,
                target.message_id,
                address,
                kind,
                status,
                (diagnostic or "")[:2000] or None,
                dsn_message_id[:256],
            )
            if new is None:
                return None
            payload: dict[str, Any] = {
                "address": address,
                "status": status,
                "reason": reason,
                "message_id": str(target.message_id) if target.message_id else None,
                "source": "dsn",
            }
            if kind == "hard":
                await conn.execute(
                    "INSERT INTO suppressions (company_id, channel, address, scope, reason)"
                    " VALUES ($1, 'email', $2, 'all', $3)"
                    " ON CONFLICT (company_id, channel, address, scope) DO NOTHING",
                    target.company_id,
                    address,
                    f"hard bounce: {reason}",
                )
                if target.provider_message_id:
                    report = StatusReport(
                        provider_message_id=target.provider_message_id,
                        status="failed",
                        status_at=datetime.now(UTC),
                        recipient=address,
                        errors=[{"code": status, "title": "hard bounce", "details": reason}],
                        error_text=f"hard bounce: {reason}",
                    )
                    await apply_statuses(conn, CHANNEL, [report])
            else:
                payload["soft_bounces"] = await conn.fetchval(
                    "SELECT count(*) FROM email_bounces WHERE company_id = $1"
                    " AND lower(address) = lower($2) AND kind = 'soft'"
                    " AND received_at > now() - make_interval(days => $3)",
                    target.company_id,
                    address,
                    SOFT_BOUNCE_WINDOW_DAYS,
                )
            await conn.execute(
                "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2, $3, $4)",
                target.company_id,
                target.lead_id,
                f"email.{kind}_bounce",
                payload,
            )
        return payload

    # --- IMAP mailboxes ---

    async def enabled_mailboxes(self) -> list[Mailbox]:
        rows = await self.pool.fetch(
            "SELECT id, company_id, host, port, security, username, password, folder,"
            " after_filing, filed_folder, since FROM email_mailboxes WHERE enabled"
            " ORDER BY created_at"
        )
        return [Mailbox(**dict(r)) for r in rows]

    async def mailbox_checked(
        self, mailbox_id: uuid.UUID, *, filed: int, error: str | None
    ) -> None:
        await self.pool.execute(
            "UPDATE email_mailboxes SET last_checked_at = now(), last_error = $2,"
            " last_filed_at = CASE WHEN $3 > 0 THEN now() ELSE last_filed_at END"
            " WHERE id = $1",
            mailbox_id,
            error[:1000] if error else None,
            filed,
        )
