"""The console's first admin: on `shvya up`, the default company gets an admin user (email
CONSOLE_ADMIN_EMAIL, password CONSOLE_ADMIN_PASSWORD, generated into `.env` on first start), so a
new install can sign in at once. An existing user is left as it is: a password changed in the
console is never reset by a restart. A CONSOLE_ADMIN_PASSWORD shorter than the console's own
minimum (MIN_PASSWORD_LENGTH) is refused rather than made the admin's password.
"""

from __future__ import annotations

import asyncpg

from shvya_common.passwords import MIN_PASSWORD_LENGTH, hash_password

DEFAULT_ADMIN_EMAIL = "admin@shvya.local"


async def ensure_console_admin(dsn: str, email: str, password: str, company_name: str) -> bool:
    """Create the default company's admin user unless it exists; True when created now.
    Raises ValueError, creating nothing, when the user would get a password that is too short."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO companies (name, is_default) VALUES ($1, true)"
                " ON CONFLICT (is_default) WHERE is_default DO NOTHING",
                company_name,
            )
            company_id = await conn.fetchval("SELECT id FROM companies WHERE is_default")
            exists = await conn.fetchval(
                "SELECT true FROM users WHERE company_id = $1 AND email = lower($2)",
                company_id,
                email,
            )
            if exists:
                return False
            if len(password) < MIN_PASSWORD_LENGTH:
                raise ValueError(
                    f"CONSOLE_ADMIN_PASSWORD is shorter than {MIN_PASSWORD_LENGTH} characters;"
                    " set a longer one (or remove it from .env to have one generated)"
                )
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
