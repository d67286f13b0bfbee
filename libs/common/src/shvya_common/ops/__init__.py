"""The operator commands of `shvya`: what is queued, stuck or dead-lettered, and replaying it.

`streams` and `consumers` read JetStream; `stats`, `jobs`, `dlq`, `companies`, `keys` and `migrate`
read PostgreSQL (`jobs show` reads both); `dlq replay` goes through the job bus
(`JobBus.replay`), as `POST /admin/dlq/replay` does. Every command takes `--json`. A server that
cannot be reached is named, with how to start it, instead of a traceback, and each exit code
means one thing (`EXIT_CODES`, listed in docs/operations.md and in `shvya --help`).

`add_commands` puts them on the `shvya` parser; each sets `handler`, which `cli.main` calls.
"""

from __future__ import annotations

import argparse
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from shvya_common.ops.base import EXIT_CODES, EXIT_OK, STATUSES, Command, run

__all__ = ["EXIT_CODES", "add_commands", "epilog", "preflight_database"]


def epilog() -> str:
    """The exit codes, for `--help`."""
    return "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


def _lazy(module: str, name: str) -> Command:
    async def command(args: argparse.Namespace, settings: Any) -> int:
        from importlib import import_module

        target: Command = getattr(import_module(f"shvya_common.ops.{module}"), name)
        return await target(args, settings)

    return command


def _handler(module: str, name: str) -> partial[int]:
    return partial(run, _lazy(module, name))


def _json_flag() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parent


def add_commands(sub: Any) -> None:
    """Add the operator commands to the `shvya` subcommand parser `sub`."""
    js = _json_flag()
    fmt = argparse.RawDescriptionHelpFormatter

    def command(name: str, text: str, **kw: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, help=text, description=text, parents=[js], epilog=epilog(), formatter_class=fmt
        )
        parser.set_defaults(**kw)
        return parser

    def group(name: str, text: str) -> Any:
        parser = sub.add_parser(name, help=text, description=text)
        return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    def child(parent: Any, name: str, text: str, handler: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(
            name, help=text, description=text, parents=[js], epilog=epilog(), formatter_class=fmt
        )
        parser.set_defaults(handler=handler)
        return parser

    command(
        "streams",
        "JetStream streams: subjects, retention, messages, bytes, consumers (needs NATS)",
        handler=_handler("streams", "streams"),
    )
    consumers = command(
        "consumers",
        "durable consumers of the jobs stream, one per service and priority: pending, ack"
        " pending, redelivered (needs NATS)",
        handler=_handler("streams", "consumers"),
    )
    consumers.add_argument("--service", help="only this service's consumers, e.g. engage")
    command(
        "stats",
        "jobs by status and outbound sends by status, as GET /queue/stats, and by task"
        " (needs PostgreSQL)",
        handler=_handler("jobs", "stats"),
    )

    jobs = group("jobs", "jobs and sends as the database records them")
    listing = child(
        jobs,
        "list",
        "the latest jobs and sends (dispatch.send), newest first (needs PostgreSQL)",
        _handler("jobs", "jobs_list"),
    )
    listing.add_argument("--status", choices=STATUSES, help="only this status")
    listing.add_argument("--task", help="only this task (dispatch.send: sends)")
    listing.add_argument("--company", type=uuid.UUID, help="only this company's")
    listing.add_argument("--kind", choices=("all", "jobs", "sends"), default="all")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    show = child(
        jobs,
        "show",
        "one job or send by id: its row, its message in the jobs stream, its timers"
        " (needs PostgreSQL and NATS)",
        _handler("jobs", "jobs_show"),
    )
    show.add_argument("id", type=uuid.UUID, help="a job id, or an outbound message id")

    dlq = group("dlq", "dead letters: jobs and sends with status dlq")
    dlq_list = child(
        dlq, "list", "dead letters, newest first (needs PostgreSQL)", _handler("jobs", "dlq_list")
    )
    dlq_list.add_argument("--kind", choices=("all", "jobs", "sends"), default="all")
    dlq_list.add_argument("--task", help="only this task")
    dlq_list.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    dlq_show = child(
        dlq,
        "show",
        "one dead letter by id: its error, attempts, parameters (needs PostgreSQL)",
        _handler("jobs", "dlq_show"),
    )
    dlq_show.add_argument("id", type=uuid.UUID)
    replay = child(
        dlq,
        "replay",
        "put dead letters back on the queue, oldest first, attempts reset, through the job bus"
        " (needs PostgreSQL and NATS)",
        _handler("jobs", "dlq_replay"),
    )
    replay.add_argument("ids", nargs="*", type=uuid.UUID, help="these dead letters")
    replay.add_argument("--task", help="every dead letter of this task")
    replay.add_argument("--all", action="store_true", help="every dead letter (up to --max)")
    replay.add_argument("--kind", choices=("all", "jobs", "sends"), default="all")
    replay.add_argument("--max", type=int, default=1000, help="at most this many (1000)")
    replay.add_argument("--dry-run", action="store_true", help="list them; change nothing")

    migrate = command(
        "migrate",
        "apply database migrations (services also migrate at start-up); --status lists them"
        " (needs PostgreSQL)",
        handler=_handler("admin", "migrate"),
    )
    migrate.add_argument("--status", action="store_true", help="list applied and pending ones")
    companies = command(
        "companies",
        "the companies (tenants), default first (needs PostgreSQL)",
        handler=_handler("admin", "companies"),
    )
    companies.add_argument("--default", action="store_true", help="only the default company")
    companies.add_argument("-q", "--quiet", action="store_true", help="print only the ids")
    keys = group("keys", "a company's API keys: list, create (shown once), revoke")
    for name, text in (
        ("list", "the company's keys: prefix, name, role, last use (never the keys)"),
        ("create", "a new key with a role, printed once (only its hash is kept)"),
    ):
        parser = child(keys, name, text, _handler("admin", f"keys_{name}"))
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--company", type=uuid.UUID, help="the company's id")
        which.add_argument("--default", action="store_true", help="the default company")
        if name == "list":
            parser.add_argument("--all", action="store_true", help="revoked keys too")
        else:
            parser.add_argument("--name", required=True, help="what the key is for")
            parser.add_argument(
                "--role", choices=("admin", "agent", "ingest"), default="agent", help="its role"
            )
    revoke = child(
        keys,
        "revoke",
        "revoke a key by its prefix (shvya_xxxxxxxx) or id",
        _handler("admin", "keys_revoke"),
    )
    revoke.add_argument("key", help="the key's prefix, id, or the key itself")
    asyncapi = command(
        "asyncapi",
        "print the AsyncAPI 3 document of the subjects and streams (also GET /asyncapi.json)",
        handler=_handler("admin", "asyncapi"),
    )
    asyncapi.add_argument("--output", type=Path, help="write it to this file")

    whatsapp = group("whatsapp-web", "WhatsApp Web accounts")
    login = whatsapp.add_parser(
        "login",
        help="link an account by QR or pairing code (runs `python -m shvya_dispatch"
        " whatsapp-web-login`)",
        description="Link a WhatsApp Web account: show its QR code (terminal and PNG) or, with"
        " --phone, a pairing code, and wait until the phone links it. When a running dispatch"
        " replica holds the account, that replica serves the login.",
        epilog=epilog(),
        formatter_class=fmt,
    )
    login.add_argument("--account", help="account (profile) name; default WHATSAPP_WEB_ACCOUNT")
    login.add_argument("--phone", help="link with a pairing code for this number (+E.164)")
    login.add_argument("--qr-path", type=Path, help="where to save the QR PNG")
    login.add_argument("--timeout", type=float, help="seconds to wait for the scan")
    login.add_argument("--settle-seconds", type=float, help="seconds to keep the browser open")
    login.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line for scripts: each QR code or pairing code as it comes,"
        " then the outcome with its exit code (messages for a person go to stderr)",
    )

    def _login(args: argparse.Namespace) -> int:
        from shvya_common.ops.admin import whatsapp_web_login

        return whatsapp_web_login(args)

    login.set_defaults(handler=_login)


def preflight_database() -> int:
    """EXIT_OK when PostgreSQL answers; otherwise say which server and how to start it."""

    async def probe(_args: argparse.Namespace, settings: Any) -> int:
        from shvya_common.ops.base import database

        async with database(settings):
            return EXIT_OK

    return run(probe, argparse.Namespace())
