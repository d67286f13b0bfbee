"""The console's first admin: on `shvya up`, the default company gets an admin user (email
CONSOLE_ADMIN_EMAIL, password CONSOLE_ADMIN_PASSWORD, generated into `.env` on first start), so a
new install can sign in at once. An existing user is left as it is: a password changed in the
console is never reset by a restart.
"""

from __future__ import annotations

import asyncpg

from shvya_common.passwords import hash_password

DEFAULT_ADMIN_EMAIL = "admin@shvya.local"


async def ensure_console_admin(dsn: str, email: str, password: str, company_name: str) -> bool:
    """Create the default company's admin user unless it exists; True when created now."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO companies (name, is_default) VALUES ($1, true)"
                " ON CONFLICT (is_default) WHERE is_default DO NOTHING",
                company_name,
            )
            company_id = await conn.fetchval("SELECT id FROM companies WHERE is_default")
            created = await conn.fetchval(
                "INSERT INTO users (company_id, email, full_name, role, password_hash)"
                " VALUES ($1, lower($2), 'Console admin', 'admin', $3)"
                " ON CONFLICT (company_id, email) DO NOTHING RETURNING id",
                company_id,
                email,
                hash_password(password),
            )
    finally:
        await conn.close()
    return created is not None
