"""`shvya migrate [--status]`, `shvya companies`, `shvya keys list|create|revoke`, `shvya asyncapi`
and `shvya whatsapp-web login` (which runs dispatch's `whatsapp-web-login` command and returns its
exit code)."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import uuid
from importlib.util import find_spec
from typing import Any

from shvya_common.apikeys import KEY_COLUMNS, insert_key, key_prefix, record_audit
from shvya_common.ops.base import (
    EXIT_OK,
    EXIT_USAGE,
    NotFound,
    Row,
    Usage,
    database,
    emit,
    table,
)
from shvya_common.settings import CommonSettings


async def migrate(args: argparse.Namespace, settings: CommonSettings) -> int:
    from shvya_common.db import migrate as apply
    from shvya_common.db import migration_files

    if not args.status:
        async with database(settings):  # names the server, with how to start it, when it is down
            pass
        applied = await apply(settings.dsn)
        names = ", ".join(applied) or "schema up to date"
        emit(args, {"applied": applied}, f"applied {len(applied)} migration(s): {names}")
        return EXIT_OK
    async with database(settings) as pool:
        exists = await pool.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        done = (
            {r["version"]: r for r in await pool.fetch("SELECT * FROM schema_migrations")}
            if exists
            else {}
        )
    rows: list[Row] = []
    for version, name, _ in migration_files():
        record = done.get(version)
        rows.append(
            {
                "version": version,
                "name": name,
                "status": "applied" if record else "pending",
                "applied_at": record["applied_at"] if record else None,
            }
        )
    pending = [r["name"] for r in rows if r["status"] == "pending"]
    summary = (
        f"{len(pending)} pending: run `shvya migrate` (services also migrate at start-up)"
        if pending
        else "schema up to date"
    )
    emit(
        args,
        {"migrations": rows, "pending": pending},
        table(rows, ["version", "name", "status", "applied_at"]) + "\n" + summary,
    )
    return EXIT_OK


async def companies(args: argparse.Namespace, settings: CommonSettings) -> int:
    async with database(settings) as pool:
        records = await pool.fetch(
            "SELECT id, name, is_default, timezone, created_at FROM companies"
            " WHERE NOT $1 OR is_default ORDER BY is_default DESC, created_at",
            args.default,
        )
    rows = [dict(r) for r in records]
    if not rows:
        raise NotFound("no companies yet: ingest creates the default company when it starts")
    if args.quiet and not args.json:
        print("\n".join(str(r["id"]) for r in rows))
        return EXIT_OK
    emit(args, rows, table(rows, ["id", "name", "is_default", "timezone", "created_at"]))
    return EXIT_OK


async def _company_id(pool: Any, args: argparse.Namespace) -> uuid.UUID:
    """The company named by --company, or the default company with --default."""
    if args.company is not None:
        found = await pool.fetchval("SELECT id FROM companies WHERE id = $1", args.company)
        if found is None:
            raise NotFound(f"no company {args.company} (`shvya companies` lists them)")
        return uuid.UUID(str(found))
    if not args.default:
        raise Usage("name a company: --company ID, or --default")
    found = await pool.fetchval("SELECT id FROM companies WHERE is_default")
    if found is None:
        raise NotFound("no default company yet: ingest creates it when it starts")
    return uuid.UUID(str(found))


def _actor() -> str:
    return f"operator:cli@{socket.gethostname()}"


async def keys_list(args: argparse.Namespace, settings: CommonSettings) -> int:
    async with database(settings) as pool:
        company_id = await _company_id(pool, args)
        records = await pool.fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE company_id = $1"
            " AND ($2 OR revoked_at IS NULL) ORDER BY created_at",
            company_id,
            args.all,
        )
    rows = [dict(r) for r in records]
    emit(
        args,
        rows,
        table(rows, ["prefix", "name", "role", "created_at", "last_used_at", "revoked_at"]),
    )
    return EXIT_OK


async def keys_create(args: argparse.Namespace, settings: CommonSettings) -> int:
    async with database(settings) as pool, pool.acquire() as conn, conn.transaction():
        company_id = await _company_id(conn, args)
        key, row = await insert_key(conn, company_id, args.name, args.role, _actor())
    emit(
        args,
        {**dict(row), "key": key},
        f"{key}\n(a {args.role} key for company {company_id}, prefix {row['prefix']}: shown"
        " this once, only its hash is kept)",
    )
    return EXIT_OK


async def keys_revoke(args: argparse.Namespace, settings: CommonSettings) -> int:
    given = args.key
    prefix = key_prefix(given) or given  # the key itself, or already its prefix
    async with database(settings) as pool, pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
            " WHERE prefix = $1 OR id::text = $2"
            f" RETURNING {KEY_COLUMNS}",
            prefix,
            given,
        )
        if row is None:
            raise NotFound(f"no API key {given!r} (`shvya keys list` shows the prefixes)")
        await record_audit(
            conn, row["company_id"], _actor(), "api_key.revoked", {"key": row["prefix"]}
        )
    emit(
        args,
        dict(row),
        f"revoked {row['prefix']} ({row['name']}, {row['role']}); ingest stops accepting it"
        " within 10 s (its key cache)",
    )
    return EXIT_OK


async def asyncapi(args: argparse.Namespace, settings: CommonSettings) -> int:
    from shvya_common.asyncapi import asyncapi_document

    document = asyncapi_document(settings.nats_prefix, settings.nats_servers[0])
    text = json.dumps(document, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
    return EXIT_OK


def whatsapp_web_login(args: argparse.Namespace) -> int:
    """Run `python -m shvya_dispatch whatsapp-web-login` with the same options."""
    if find_spec("shvya_dispatch") is None:
        print(
            "error: the dispatch service is not installed here (run `make install`);"
            " the WhatsApp Web login runs in dispatch's environment",
            file=sys.stderr,
        )
        return EXIT_USAGE
    command = [sys.executable, "-m", "shvya_dispatch", "whatsapp-web-login"]
    for flag, value in (
        ("--account", args.account),
        ("--phone", getattr(args, "phone", None)),
        ("--qr-path", args.qr_path),
        ("--timeout", args.timeout),
        ("--settle-seconds", args.settle_seconds),
    ):
        if value is not None:
            command += [flag, str(value)]
    if getattr(args, "json", False):
        command.append("--json")
    return subprocess.call(command)
