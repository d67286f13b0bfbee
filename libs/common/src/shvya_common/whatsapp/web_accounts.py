"""WhatsApp Web accounts as every process sees them (`whatsapp_web_accounts`, migration 0015).

One row per linked account (browser profile): the **lease** that lets exactly one dispatch
replica (or one login command) drive its browser, the **state** the last health probe saw, its
**pause** (restriction, timelock 463, ban, logout), and what the warm-up (`linked_at`), the
inactivity reminder (`phone_active_at`) and the inbound catch-up (`inbound_watermark`) need.
The login QR / pairing code lives in `whatsapp_web_logins`, where the console reads it.

The lease is taken with one statement: free (no owner, or expired) or already ours. Every change
of owner bumps `epoch`, so a replica that was partitioned past its lease and comes back finds a
newer epoch and closes its browser instead of driving it beside the new owner. SQL only; the
callers own the transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias

import asyncpg

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool

AccountState = Literal[
    "unknown",
    "starting",
    "connected",
    "syncing",
    "logged_out",
    "offline",
    "conflict",
    "restricted",
    "banned",
    "failed",
]
STATES: tuple[str, ...] = (
    "unknown",
    "starting",
    "connected",
    "syncing",
    "logged_out",
    "offline",
    "conflict",
    "restricted",
    "banned",
    "failed",
)
PauseScope = Literal["all", "new_contacts"]

_ACQUIRE = """
INSERT INTO whatsapp_web_accounts AS a (account, owner, lease_until, epoch)
VALUES ($1, $2, now() + make_interval(secs => $3::float8), 1)
ON CONFLICT (account) DO UPDATE
   SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until, updated_at = now(),
       epoch = CASE WHEN a.owner = EXCLUDED.owner AND a.lease_until > now() THEN a.epoch
                    ELSE a.epoch + 1 END
 WHERE a.owner IS NULL OR a.owner = EXCLUDED.owner OR a.lease_until IS NULL
    OR a.lease_until <= now()
RETURNING epoch
"""


@dataclass(frozen=True)
class WebAccount:
    account: str
    owner: str | None
    lease_live: bool
    epoch: int
    state: str
    state_reason: str | None
    state_since: datetime
    checked_at: datetime | None
    wid: str | None
    linked_at: datetime | None
    phone_active_at: datetime | None
    reminder_sent_at: datetime | None
    paused_at: datetime | None
    paused_until: datetime | None
    pause_code: str | None
    pause_reason: str | None
    pause_scope: str | None
    pause_in_force: bool
    refusals: int
    login_requested: bool
    login_method: str | None
    login_phone: str | None
    inbound_watermark: int
    now: datetime


_SELECT = """
SELECT account, owner, coalesce(lease_until > now(), false) AS lease_live, epoch, state,
       state_reason, state_since, checked_at, wid, linked_at, phone_active_at, reminder_sent_at,
       paused_at, paused_until, pause_code, pause_reason, pause_scope,
       (paused_at IS NOT NULL AND (paused_until IS NULL OR paused_until > now())) AS pause_in_force,
       refusals, coalesce(login_requested_until > now(), false) AS login_requested,
       login_method, login_phone, inbound_watermark, now() AS now
FROM whatsapp_web_accounts
"""


def _row(row: asyncpg.Record) -> WebAccount:
    return WebAccount(**dict(row))


async def read_account(conn: Executor, account: str) -> WebAccount | None:
    row = await conn.fetchrow(_SELECT + " WHERE account = $1", account)
    return _row(row) if row is not None else None


async def list_accounts(conn: Executor) -> list[WebAccount]:
    return [_row(r) for r in await conn.fetch(_SELECT + " ORDER BY account")]


async def acquire_lease(conn: Executor, account: str, owner: str, ttl: float) -> int | None:
    """Take or renew the lease; its epoch, or None while another live owner holds it."""
    epoch: int | None = await conn.fetchval(_ACQUIRE, account, owner, ttl)
    return epoch


async def release_lease(conn: Executor, account: str, owner: str) -> None:
    await conn.execute(
        "UPDATE whatsapp_web_accounts SET owner = NULL, lease_until = NULL, updated_at = now()"
        " WHERE account = $1 AND owner = $2",
        account,
        owner,
    )


async def set_state(
    conn: Executor,
    account: str,
    state: AccountState,
    reason: str | None,
    *,
    wid: str | None = None,
) -> tuple[str, bool]:
    """Record what the probe saw; returns (previous state, whether it changed). The first time
    an account is seen connected starts its warm-up (`linked_at`) and counts as phone use."""
    row = await conn.fetchrow(
        "WITH old AS (SELECT state, state_reason FROM whatsapp_web_accounts WHERE account = $1)"
        " INSERT INTO whatsapp_web_accounts AS a (account, state, state_reason, checked_at, wid,"
        "   linked_at, phone_active_at)"
        " VALUES ($1, $2, $3, now(), $4, CASE WHEN $2 = 'connected' THEN now() END,"
        "   CASE WHEN $2 = 'connected' THEN now() END)"
        " ON CONFLICT (account) DO UPDATE SET"
        "   state = EXCLUDED.state, state_reason = EXCLUDED.state_reason, checked_at = now(),"
        "   state_since = CASE WHEN a.state IS DISTINCT FROM EXCLUDED.state"
        "     OR a.state_reason IS DISTINCT FROM EXCLUDED.state_reason"
        "     THEN now() ELSE a.state_since END,"
        "   wid = coalesce(EXCLUDED.wid, a.wid),"
        "   linked_at = coalesce(a.linked_at, EXCLUDED.linked_at),"
        "   phone_active_at = coalesce(a.phone_active_at, EXCLUDED.phone_active_at),"
        "   updated_at = now()"
        " RETURNING (SELECT state FROM old) AS old_state,"
        "   (SELECT state_reason FROM old) AS old_reason",
        account,
        state,
        reason,
        wid,
    )
    old = row["old_state"] or "unknown"
    return old, (old != state or row["old_reason"] != reason)


async def note_linked(conn: Executor, account: str) -> None:
    """A fresh link (QR scanned, code entered) proves the phone is in use; a new number's
    warm-up starts now, an old one's keeps its start."""
    await conn.execute(
        "INSERT INTO whatsapp_web_accounts AS a (account, linked_at, phone_active_at)"
        " VALUES ($1, now(), now()) ON CONFLICT (account) DO UPDATE"
        " SET linked_at = coalesce(a.linked_at, now()), phone_active_at = now(),"
        " reminder_sent_at = NULL, updated_at = now()",
        account,
    )


async def note_phone_activity(conn: Executor, account: str, at: datetime) -> None:
    await conn.execute(
        "UPDATE whatsapp_web_accounts SET phone_active_at = greatest(phone_active_at, $2),"
        " reminder_sent_at = CASE WHEN phone_active_at IS NULL OR phone_active_at < $2"
        " THEN NULL ELSE reminder_sent_at END, updated_at = now() WHERE account = $1",
        account,
        at,
    )


async def mark_reminded(conn: Executor, account: str) -> bool:
    """Claim the inactivity reminder for the current quiet spell (once per spell)."""
    done = await conn.fetchval(
        "UPDATE whatsapp_web_accounts SET reminder_sent_at = now(), updated_at = now()"
        " WHERE account = $1 AND reminder_sent_at IS NULL RETURNING 1",
        account,
    )
    return done is not None


async def start_pause(
    conn: Executor,
    account: str,
    code: str,
    reason: str,
    until: datetime | None,
    scope: PauseScope,
) -> bool:
    """Pause the account's sends; True when no pause was in force before (a new pause). A pause
    in force is widened (scope 'all' wins) and extended, never shortened."""
    created = await conn.fetchval(
        "WITH old AS (SELECT paused_at IS NOT NULL AND (paused_until IS NULL"
        "   OR paused_until > now()) AS live FROM whatsapp_web_accounts WHERE account = $1)"
        " INSERT INTO whatsapp_web_accounts AS a (account, paused_at, paused_until, pause_code,"
        "   pause_reason, pause_scope) VALUES ($1, now(), $4, $2, $3, $5)"
        " ON CONFLICT (account) DO UPDATE SET"
        "   paused_at = CASE WHEN (SELECT live FROM old) THEN a.paused_at ELSE now() END,"
        "   paused_until = CASE WHEN (SELECT live FROM old) AND (a.paused_until IS NULL"
        "     OR EXCLUDED.paused_until IS NULL) THEN NULL"
        "     WHEN (SELECT live FROM old) THEN greatest(a.paused_until, EXCLUDED.paused_until)"
        "     ELSE EXCLUDED.paused_until END,"
        "   pause_code = EXCLUDED.pause_code, pause_reason = EXCLUDED.pause_reason,"
        "   pause_scope = CASE WHEN (SELECT live FROM old) AND a.pause_scope = 'all' THEN 'all'"
        "     ELSE EXCLUDED.pause_scope END,"
        "   updated_at = now()"
        " RETURNING NOT coalesce((SELECT live FROM old), false)",
        account,
        code,
        reason[:2000],
        until,
        scope,
    )
    return bool(created)


async def lift_pause(conn: Executor, account: str, codes: list[str] | None = None) -> bool:
    """End the pause in force (only one of `codes`, when given); False when none was."""
    lifted = await conn.fetchval(
        "UPDATE whatsapp_web_accounts SET paused_until = now(), refusals = 0, updated_at = now()"
        " WHERE account = $1 AND paused_at IS NOT NULL"
        " AND (paused_until IS NULL OR paused_until > now())"
        " AND ($2::text[] IS NULL OR pause_code = ANY($2::text[])) RETURNING 1",
        account,
        codes,
    )
    return lifted is not None


async def note_refusal(conn: Executor, account: str) -> int:
    """Count one refusal without a code; returns how many came in a row."""
    count: int = await conn.fetchval(
        "INSERT INTO whatsapp_web_accounts AS a (account, refusals) VALUES ($1, 1)"
        " ON CONFLICT (account) DO UPDATE SET refusals = a.refusals + 1, updated_at = now()"
        " RETURNING refusals",
        account,
    )
    return count


async def clear_refusals(conn: Executor, account: str) -> None:
    await conn.execute(
        "UPDATE whatsapp_web_accounts SET refusals = 0 WHERE account = $1 AND refusals <> 0",
        account,
    )


async def advance_watermark(conn: Executor, account: str, t: int) -> None:
    await conn.execute(
        "UPDATE whatsapp_web_accounts SET inbound_watermark = greatest(inbound_watermark, $2)"
        " WHERE account = $1",
        account,
        t,
    )


async def request_login(
    conn: Executor, account: str, method: Literal["qr", "code"], phone: str | None, seconds: float
) -> None:
    """Ask whichever process drives the account's browser to link it (QR or pairing code)."""
    await conn.execute(
        "INSERT INTO whatsapp_web_accounts AS a (account, login_requested_until, login_method,"
        "   login_phone) VALUES ($1, now() + make_interval(secs => $4::float8), $2, $3)"
        " ON CONFLICT (account) DO UPDATE SET login_requested_until = EXCLUDED."
        "login_requested_until, login_method = EXCLUDED.login_method,"
        " login_phone = EXCLUDED.login_phone, updated_at = now()",
        account,
        method,
        phone,
        seconds,
    )
    await conn.execute(
        "INSERT INTO whatsapp_web_logins (account, status, method, updated_at)"
        " VALUES ($1, 'waiting', $2, now()) ON CONFLICT (account) DO UPDATE"
        " SET status = 'waiting', method = EXCLUDED.method, qr_png = NULL, qr_text = NULL,"
        " pairing_code = NULL, detail = NULL, updated_at = now()",
        account,
        method,
    )


async def end_login_request(conn: Executor, account: str) -> None:
    await conn.execute(
        "UPDATE whatsapp_web_accounts SET login_requested_until = NULL, updated_at = now()"
        " WHERE account = $1",
        account,
    )


async def store_qr(conn: Executor, account: str, text: str, png: bytes) -> None:
    """A new QR code to scan (the previous one has expired): its text and its PNG."""
    await conn.execute(
        "INSERT INTO whatsapp_web_logins (account, status, qr_png, qr_text, method, updated_at)"
        " VALUES ($1, 'waiting', $2, $3, 'qr', now()) ON CONFLICT (account) DO UPDATE"
        " SET status = 'waiting', qr_png = EXCLUDED.qr_png, qr_text = EXCLUDED.qr_text,"
        " pairing_code = NULL, method = 'qr', detail = NULL, updated_at = now()",
        account,
        png,
        text,
    )


async def store_pairing_code(conn: Executor, account: str, code: str) -> None:
    """A phone-number pairing code to type on the phone (Linked devices > Link with phone
    number)."""
    await conn.execute(
        "INSERT INTO whatsapp_web_logins (account, status, pairing_code, method, updated_at)"
        " VALUES ($1, 'waiting', $2, 'code', now()) ON CONFLICT (account) DO UPDATE"
        " SET status = 'waiting', pairing_code = EXCLUDED.pairing_code, qr_png = NULL,"
        " qr_text = NULL, method = 'code', detail = NULL, updated_at = now()",
        account,
        code,
    )


async def store_login_outcome(
    conn: Executor,
    account: str,
    status: Literal["linked", "timed_out", "failed"],
    detail: str | None = None,
) -> None:
    """How the login ended; the codes are dropped (they can link nothing any more)."""
    await conn.execute(
        "INSERT INTO whatsapp_web_logins (account, status, detail, updated_at)"
        " VALUES ($1, $2, $3, now()) ON CONFLICT (account) DO UPDATE"
        " SET status = EXCLUDED.status, qr_png = NULL, qr_text = NULL, pairing_code = NULL,"
        " detail = EXCLUDED.detail, updated_at = now()",
        account,
        status,
        detail,
    )


async def read_login(conn: Executor, account: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT account, status, qr_png, qr_text, pairing_code, method, detail, updated_at"
        " FROM whatsapp_web_logins WHERE account = $1",
        account,
    )
    return dict(row) if row is not None else None
