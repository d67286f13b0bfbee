"""Ban-aware rules of WhatsApp Web accounts, applied by the policy engine to each send.

Before the pacing slot (`PolicyEngine.evaluate`):

- **Ownership.** With the account supervisor running, only the replica that holds the account's
  lease sends from it; a send that reaches another replica is deferred a few seconds (no
  attempt spent) and comes back, to whichever replica, until the owner takes it.
- **Pause.** An account paused for a restriction, WhatsApp's reach-out timelock (463), a ban or
  a logout sends nothing: its sends are deferred and re-checked every
  POLICY_PAUSE_RECHECK_SECONDS, never retried into the restriction. A timelock pauses only new
  contacts; replies to people the account already talked with still go. While paused, a send to
  a lead whose WhatsApp Cloud window is open is moved to the company's WhatsApp Cloud
  (POLICY_WHATSAPP_WEB_CLOUD_FALLBACK) when the company sends on Cloud. A send that has waited
  longer than POLICY_WHATSAPP_WEB_PAUSED_MAX_AGE_HOURS is held instead of going out late.

With the slot (`PolicyEngine.reserve`; the slot serialises an account's sends across replicas,
so the counts below cannot race):

- **Warm-up.** A new number's daily limit follows POLICY_WHATSAPP_WEB_WARMUP day by day after
  it was first seen linked, then the daily cap.
- **First contacts.** At most POLICY_WHATSAPP_WEB_FIRST_CONTACT_DAILY_CAP messages per account
  per local day to people the company never exchanged WhatsApp Web messages with.
- **Identical texts.** At most POLICY_WHATSAPP_WEB_IDENTICAL_TEXT_HOURLY_CAP sends of the same
  text (case and spacing ignored) per account per hour.

The counts read the account's outbound messages that left or may have left (`sent`,
`unknown`), which carry `meta.account`, `meta.first_contact` and `meta.text_hash`.
"""

from __future__ import annotations

import hashlib
import random
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from shvya_common.contracts import SendParams
from shvya_common.errors import DeferJob
from shvya_common.whatsapp import web_accounts as db

DRIVEN_ELSEWHERE_SECONDS = (2.0, 6.0)


def text_hash(text: str) -> str:
    """The same text for the identical-text limit: case and runs of spacing do not count."""
    normal = re.sub(r"\s+", " ", text).strip().casefold()
    return hashlib.sha256(normal.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Gate:
    """What the account's state says about one send."""

    action: Literal["send", "hold", "move"]
    reason: str = ""


@dataclass
class WebRules:
    pool: asyncpg.Pool
    warmup: list[int]
    first_contact_cap: int
    identical_text_cap: int
    recheck_seconds: float
    paused_max_age_hours: float
    cloud_fallback: bool
    cloud_window_hours: float
    # May this replica drive the account now (the supervisor's lease)? None: always.
    may_drive: Callable[[str], Awaitable[bool]] | None = None
    # Does the company send on WhatsApp Cloud (its own account or the platform's)?
    cloud_for: Callable[[uuid.UUID], Awaitable[bool]] | None = None
    rng: random.Random = field(default_factory=random.Random)

    async def gate(
        self, params: SendParams, account: str, now: datetime, message_id: uuid.UUID | None
    ) -> Gate:
        """Ownership and pause; raises DeferJob to wait."""
        if self.may_drive is not None and not await self.may_drive(account):
            low, high = DRIVEN_ELSEWHERE_SECONDS
            raise DeferJob(
                now + timedelta(seconds=self.rng.uniform(low, high)),
                f"whatsapp web account {account} is driven by another replica",
            )
        row = await db.read_account(self.pool, account)
        if row is None or not row.pause_in_force:
            return Gate("send")
        reason = f"whatsapp web account {account} paused ({row.pause_code}): {row.pause_reason}"
        if row.pause_scope == "new_contacts" and await self.talked_with(params):
            return Gate("send")
        if message_id is not None:
            queued_at = await self.pool.fetchval(
                "SELECT created_at FROM messages WHERE id = $1", message_id
            )
            if queued_at is not None and now - queued_at > timedelta(
                hours=self.paused_max_age_hours
            ):
                return Gate(
                    "hold",
                    f"{reason}; held after waiting more than {self.paused_max_age_hours:g} h",
                )
        if await self.cloud_open(params, now):
            return Gate("move", reason)
        recheck = now + timedelta(seconds=self.recheck_seconds)
        until = recheck if row.paused_until is None else min(recheck, row.paused_until)
        raise DeferJob(until, reason)

    async def talked_with(self, params: SendParams) -> bool:
        """Has the company exchanged WhatsApp Web messages with this lead (a warm chat)?"""
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE company_id = $1 AND lead_id = $2"
                " AND channel = 'whatsapp_web' AND (direction = 'inbound'"
                " OR status IN ('sent', 'unknown')))",
                params.company_id,
                params.lead_id,
            )
        )

    async def cloud_open(self, params: SendParams, now: datetime) -> bool:
        """Could this send go through WhatsApp Cloud as free text now?"""
        if not self.cloud_fallback or self.cloud_for is None or params.template_id is not None:
            return False
        if not await self.cloud_for(params.company_id):
            return False
        last = await self.pool.fetchval(
            "SELECT max(created_at) FROM messages WHERE company_id = $1 AND lead_id = $2"
            " AND channel = 'whatsapp_cloud' AND direction = 'inbound'",
            params.company_id,
            params.lead_id,
        )
        return last is not None and now - last < timedelta(hours=self.cloud_window_hours)

    async def daily_cap(self, account: str, cap: int, now: datetime) -> tuple[int, str | None]:
        """The account's daily cap today: the warm-up's limit for its day, if lower."""
        if not self.warmup:
            return cap, None
        row = await db.read_account(self.pool, account)
        linked = row.linked_at if row is not None and row.linked_at is not None else now
        day = max(0, (now - linked).days)
        if day >= len(self.warmup):
            return cap, None
        limit = self.warmup[day]
        if cap and cap <= limit:
            return cap, None
        return limit, f"warm-up day {day + 1} of {len(self.warmup)}"

    async def caps(
        self, params: SendParams, account: str, zone: str, now: datetime
    ) -> dict[str, Any]:
        """First-contact and identical-text limits; the meta the send records (for the next
        counts), or DeferJob."""
        first = not await self.talked_with(params)
        digest = text_hash(params.text)
        if first and self.first_contact_cap:
            row = await self.pool.fetchrow(
                "SELECT count(*) AS n,"
                " (date_trunc('day', now() AT TIME ZONE $2) + interval '1 day') AT TIME ZONE $2"
                " AS next_day"
                " FROM messages WHERE channel = 'whatsapp_web' AND direction = 'outbound'"
                " AND status IN ('sent', 'unknown') AND meta->>'account' = $1"
                " AND meta->>'first_contact' = 'true'"
                " AND coalesce(sent_at, updated_at) >= (date_trunc('day', now() AT TIME ZONE $2))"
                " AT TIME ZONE $2",
                account,
                zone,
            )
            if row["n"] >= self.first_contact_cap:
                raise DeferJob(
                    row["next_day"],
                    f"daily cap: {self.first_contact_cap} first contacts per whatsapp web"
                    f" account per day reached ({account})",
                )
        if self.identical_text_cap:
            rows = await self.pool.fetch(
                "SELECT coalesce(sent_at, updated_at) AS at FROM messages"
                " WHERE channel = 'whatsapp_web' AND direction = 'outbound'"
                " AND status IN ('sent', 'unknown') AND meta->>'account' = $1"
                " AND meta->>'text_hash' = $2"
                " AND coalesce(sent_at, updated_at) > now() - interval '1 hour'"
                " ORDER BY 1",
                account,
                digest,
            )
            if len(rows) >= self.identical_text_cap:
                oldest = rows[len(rows) - self.identical_text_cap]["at"]
                raise DeferJob(
                    oldest + timedelta(hours=1),
                    f"pacing: at most {self.identical_text_cap} identical texts per whatsapp web"
                    f" account per hour ({account})",
                )
        return {"first_contact": first, "text_hash": digest}
