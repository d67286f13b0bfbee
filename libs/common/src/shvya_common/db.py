"""PostgreSQL access: the asyncpg pool and the versioned migration runner.

Migrations are numbered `.sql` files in `migrations/`, each applied in its own transaction under
a transaction-level advisory lock, so every service can run them at start-up at the same time.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import asyncpg
import structlog
from pgvector.asyncpg import register_vector

log = structlog.get_logger(__name__)

# An arbitrary constant: all SHVYA processes serialise their migrations on it.
_MIGRATION_LOCK = 0x5348_5659_41


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    # pgvector's binary form: a 384-dimension vector is 1.5 KB of floats instead of ~7 KB of
    # text that both sides must print and parse. A database without the extension (an admin
    # connection, a database not migrated yet) simply has no vector codec.
    try:
        await register_vector(conn)
    except ValueError as err:
        if "unknown type" not in str(err):
            raise


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release. asyncpg's default sends `pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL` on every release, one more round trip for each `pool.fetch(...)`.
    SHVYA's code leaves no session state on a pooled connection (settings are `SET LOCAL`,
    advisory locks transaction-scoped; the one session lock, the IMAP readers', lives on a
    connection held apart), so there is nothing to reset. An open transaction is still rolled
    back by asyncpg before this runs."""


async def create_pool(
    dsn: str, min_size: int = 2, max_size: int = 16, *, synchronous_commit: bool = True
) -> asyncpg.Pool:
    """Open the pool with JSON and vector codecs installed; the caller owns and closes it.
    Pooled connections must not keep session state (see `_keep_session`).

    `synchronous_commit=False` opens the connections with PostgreSQL's `synchronous_commit`
    off (in the start-up packet: no round trip): a commit returns before its WAL is flushed,
    and a crash of the server can lose the last ~0.6 s of such commits, never half of one and
    never one that a later synchronous commit (of any connection) already returned from. Only
    the job bus's bookkeeping runs there (see `shvya_common.bus.ledgers`)."""
    settings = {} if synchronous_commit else {"synchronous_commit": "off"}
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(min_size, max_size),
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
        server_settings=settings,
    )
    assert pool is not None
    return pool


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled migration, in order."""
    found = []
    for entry in resources.files("shvya_common.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; returns the names applied by this call."""
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        # A session lock held for the whole run: concurrent starters wait here, then find
        # everything applied.
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, sql in migration_files():
            async with conn.transaction():
                done = await conn.fetchval(
                    "SELECT 1 FROM schema_migrations WHERE version = $1", version
                )
                if done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
                applied.append(name)
                log.info("migration_applied", migration=name)
    finally:
        await conn.close()  # closing the session releases the advisory lock
    return applied


# SQLSTATE classes that mean "the database cannot serve us now", not "the statement is wrong":
# connection exceptions, insufficient resources, operator intervention (shutdown, starting up),
# and a database closed to new connections.
OUTAGE_SQLSTATES = ("08", "53", "57", "55000")


def is_outage(exc: asyncpg.PostgresError) -> bool:
    """True when a PostgreSQL error says the server is unavailable, not that we erred."""
    return (getattr(exc, "sqlstate", "") or "").startswith(OUTAGE_SQLSTATES)


def record_to_dict(record: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(record) if record is not None else None
