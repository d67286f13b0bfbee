"""What every operator command shares: exit codes, errors that say what to do next, the
connections to PostgreSQL and NATS (named with how to start them when they cannot be reached),
and table or JSON output."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shvya_common.contracts.states import JobStatus, SendStatus
from shvya_common.settings import CommonSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND, EXIT_BUSY, EXIT_SCHEMA = range(
    7
)
EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_FAILED: "the command ran and failed (a server reported an error)",
    EXIT_USAGE: "bad arguments or settings",
    EXIT_UNREACHABLE: "a server could not be reached (PostgreSQL, NATS; WhatsApp Web)",
    EXIT_NOT_FOUND: "nothing matched (no such job, dead letter or company)",
    EXIT_BUSY: "in use by another process (a WhatsApp Web profile)",
    EXIT_SCHEMA: "the database schema is older than this code: run `shvya migrate`",
}
START_HINT = (
    "start the platform with `make up` (or only NATS and PostgreSQL with `make infra`),"
    " or point {setting} at a running server"
)
STATUSES = sorted({s.value for s in JobStatus} | {s.value for s in SendStatus})
Row = dict[str, Any]


class OpsError(Exception):
    """A failure with its exit code and a message that says what to do next."""

    code = EXIT_FAILED


class Unreachable(OpsError):
    code = EXIT_UNREACHABLE


class NotFound(OpsError):
    code = EXIT_NOT_FOUND


class Usage(OpsError):
    code = EXIT_USAGE


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username}:***@{host}")
    return urlunsplit(parts)


@asynccontextmanager
async def database(settings: CommonSettings) -> AsyncIterator[asyncpg.Pool]:
    """A small pool, or `Unreachable` naming PostgreSQL and how to start it."""
    from shvya_common.db import create_pool

    try:
        pool = await asyncio.wait_for(create_pool(settings.dsn, 1, 2), 10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        if isinstance(err, asyncpg.InvalidCatalogNameError):
            why = "its database does not exist"
        else:
            why = str(err) or type(err).__name__
        url = _redact(settings.dsn)
        hint = START_HINT.format(setting="DATABASE_URL")
        raise Unreachable(f"cannot reach PostgreSQL at {url} ({why}): {hint}") from err
    try:
        yield pool
    finally:
        await pool.close()


async def _no_errors(_err: Exception) -> None:
    return None


@asynccontextmanager
async def jetstream(settings: CommonSettings) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    """A NATS connection, or `Unreachable` naming NATS and how to start it."""
    try:
        # One try per server (nats.py's 0 means "keep trying"), bounded as a whole.
        connecting = nats.connect(
            servers=settings.nats_servers,
            name="shvya-cli",
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            error_cb=_no_errors,
        )
        nc = await asyncio.wait_for(connecting, 15)
    except Exception as err:  # nats.py raises OSError, TimeoutError or its NoServersError
        urls = ", ".join(_redact(u) for u in settings.nats_servers)
        hint = START_HINT.format(setting="NATS_URL")
        why = str(err) or type(err).__name__
        raise Unreachable(f"cannot reach NATS at {urls} ({why}): {hint}") from err
    try:
        yield nc, nc.jetstream()
    finally:
        await nc.close()


# --- output ---


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _json(value: Any) -> str:
    return json.dumps(value, default=_plain, indent=2, sort_keys=False)


def cell(value: Any, width: int = 60) -> str:
    if value is None:
        return "-"
    text = str(_plain(value)).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """Rows as aligned text columns under a header line."""
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def emit(args: argparse.Namespace, value: Any, text: str) -> None:
    print(_json(value) if args.json else text)


Command = Callable[[argparse.Namespace, CommonSettings], Coroutine[Any, Any, int]]


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Keep stdout for the command's output: library log lines go to stderr, warnings only."""
    if structlog.is_configured():
        yield
        return
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.reset_defaults()


def run(command: Command, args: argparse.Namespace) -> int:
    """Run one command with the settings from the environment and `.env`; the exit code."""
    from pydantic import ValidationError

    try:
        settings = CommonSettings()
    except ValidationError as err:
        print(f"error: invalid settings: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _warnings_to_stderr():
            return asyncio.run(command(args, settings))
    except OpsError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as err:
        print(
            f"error: the database schema is older than this version ({err}):"
            " run `make migrate` (or `.venv/bin/shvya migrate`)",
            file=sys.stderr,
        )
        return EXIT_SCHEMA
