"""API keys for tests: a key is a row in `api_keys`, made the way the API makes it."""

from __future__ import annotations

import uuid

import asyncpg

from shvya_common.apikeys import new_key


async def make_key(db: str | asyncpg.Pool, company_id: uuid.UUID, role: str = "admin") -> str:
    """A new key of `role` for `company_id`; returns the key itself."""
    key, prefix, digest = new_key()
    conn = await asyncpg.connect(db) if isinstance(db, str) else db
    try:
        await conn.execute(
            "INSERT INTO api_keys (company_id, name, role, prefix, key_hash, created_by)"
            " VALUES ($1, 'test', $2, $3, $4, 'test')",
            company_id,
            role,
            prefix,
            digest,
        )
    finally:
        if isinstance(db, str):
            await conn.close()  # type: ignore[union-attr]
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
