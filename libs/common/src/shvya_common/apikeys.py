"""Company API keys as they are made and stored: `shvya_<8 hex>_<secret>`, shown once, kept as
a SHA-256 with the visible prefix `shvya_<8 hex>` that tells keys apart. Ingest checks them
(`shvya_ingest.auth`); ingest's `/v1/api-keys` routes and the operator's `shvya keys` make them
with `insert_key` and revoke them, each with an audit event (`record_audit`)."""

from __future__ import annotations

import contextvars
import hashlib
import secrets
import uuid
from typing import Any

import asyncpg

from shvya_common.contracts.events import EventType
from shvya_common.events import record_event

KEY_PREFIX = "shvya_"
KEY_COLUMNS = "id, company_id, name, role, prefix, created_by, created_at, last_used_at, revoked_at"


def new_key() -> tuple[str, str, str]:
    """A fresh key: (the key to show once, its prefix, its hash)."""
    ident = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{ident}_{secrets.token_urlsafe(32)}"
    return key, f"{KEY_PREFIX}{ident}", hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str | None:
    """The visible prefix of something shaped like a key, else None."""
    if not key.startswith(KEY_PREFIX):
        return None
    ident, sep, rest = key[len(KEY_PREFIX) :].partition("_")
    if not sep or not rest or len(ident) != 8:
        return None
    return f"{KEY_PREFIX}{ident}"


# Set per HTTP request by ingest's audit trail middleware (a mutable flag, so a handler's write
# is seen by the middleware): whether the request recorded an audit event of its own.
AUDIT_WRITTEN: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "audit_written", default=None
)


async def record_audit(
    conn: asyncpg.Connection | asyncpg.Pool,
    company_id: uuid.UUID | None,
    actor: str,
    action: str,
    target: dict[str, Any],
) -> None:
    """An admin action for the audit trail: who, what, when (an `audit.action` event)."""
    payload = {"actor": actor, "action": action, "target": target}
    await record_event(conn, company_id, None, EventType.AUDIT, payload)
    flag = AUDIT_WRITTEN.get()
    if flag is not None:
        flag[0] = True  # ingest's AuditTrail: this request's change has its own event


async def insert_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    company_id: uuid.UUID,
    name: str,
    role: str,
    actor: str,
) -> tuple[str, asyncpg.Record]:
    """A new key for the company, stored hashed, with its audit event: (the key to show once,
    its row as KEY_COLUMNS)."""
    key, prefix, digest = new_key()
    row = await conn.fetchrow(
        "INSERT INTO api_keys (company_id, name, role, prefix, key_hash, created_by)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {KEY_COLUMNS}",
        company_id,
        name,
        role,
        prefix,
        digest,
        actor,
    )
    await record_audit(conn, company_id, actor, "api_key.created", {"key": prefix, "role": role})
    return key, row
