"""WhatsApp Web logins as every process sees them (`whatsapp_web_logins`): the login flow, in
whichever process runs it, writes the current QR code and the outcome here; ingest serves
them to the admin of the company whose channel account names the profile, so the console
shows the QR on the page instead of a file path on the dispatch machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

LoginStatus = Literal["waiting", "linked", "timed_out", "failed"]


@dataclass(frozen=True)
class WebLogin:
    account: str
    status: LoginStatus
    qr_png: bytes | None
    detail: str | None
    updated_at: datetime


async def store_qr(pool: asyncpg.Pool, account: str, png: bytes) -> None:
    """A new QR code to scan (the previous one has expired)."""
    await pool.execute(
        "INSERT INTO whatsapp_web_logins (account, status, qr_png, detail, updated_at)"
        " VALUES ($1, 'waiting', $2, NULL, now()) ON CONFLICT (account) DO UPDATE"
        " SET status = 'waiting', qr_png = EXCLUDED.qr_png, detail = NULL, updated_at = now()",
        account,
        png,
    )


async def store_outcome(
    pool: asyncpg.Pool, account: str, status: LoginStatus, detail: str | None = None
) -> None:
    """How the login ended; the QR is dropped (it can link nothing any more)."""
    await pool.execute(
        "INSERT INTO whatsapp_web_logins (account, status, qr_png, detail, updated_at)"
        " VALUES ($1, $2, NULL, $3, now()) ON CONFLICT (account) DO UPDATE"
        " SET status = EXCLUDED.status, qr_png = NULL, detail = EXCLUDED.detail,"
        " updated_at = now()",
        account,
        status,
        detail,
    )


async def read_login(conn: asyncpg.Pool | asyncpg.Connection, account: str) -> WebLogin | None:
    row = await conn.fetchrow(
        "SELECT account, status, qr_png, detail, updated_at FROM whatsapp_web_logins"
        " WHERE account = $1",
        account,
    )
    return None if row is None else WebLogin(**dict(row))
