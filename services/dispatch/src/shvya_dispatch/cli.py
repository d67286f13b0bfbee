"""`python -m shvya_dispatch` runs the dispatch service; `python -m shvya_dispatch
whatsapp-web-login --account NAME [--phone +N]` links a WhatsApp Web account (QR or pairing
code; through the running dispatch replica that drives it, or here), `whatsapp-web-status`,
`whatsapp-web-resume` and `whatsapp-web-canary` look after them (`shvya_dispatch.web_cli`);
`python -m shvya_dispatch email-dkim-key --company ID --domain D --selector S` makes (or, with
`--key-file`, imports) a company's DKIM key, stores it encrypted and prints the DNS record.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shvya_dispatch",
        description="Without a command, run the dispatch service.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    login = commands.add_parser(
        "whatsapp-web-login",
        help="link a WhatsApp Web account by QR code (or a pairing code with --phone)",
    )
    login.add_argument(
        "--account", help="account (browser profile) name; default: WHATSAPP_WEB_ACCOUNT"
    )
    login.add_argument(
        "--phone", help="link with a pairing code for this number instead of a QR code"
    )
    login.add_argument(
        "--qr-path", type=Path, help="where to save the QR PNG; default: next to the profiles"
    )
    login.add_argument(
        "--timeout", type=float, help="seconds to wait; default: WHATSAPP_WEB_LOGIN_TIMEOUT_SECONDS"
    )
    login.add_argument(
        "--settle-seconds",
        type=float,
        default=5.0,
        help="keep the browser open this long after linking, so the session is stored",
    )
    login.add_argument(
        "--no-terminal-qr", action="store_true", help="do not draw the QR code in the terminal"
    )
    login.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line: each QR or pairing code, then the outcome",
    )
    status = commands.add_parser(
        "whatsapp-web-status", help="WhatsApp Web accounts: lease, health, pause, warm-up"
    )
    status.add_argument("--account", help="only this account")
    resume = commands.add_parser(
        "whatsapp-web-resume", help="lift a WhatsApp Web account's pause (restriction, ban)"
    )
    resume.add_argument("--account", required=True)
    canary = commands.add_parser(
        "whatsapp-web-canary",
        help="send one message from a real linked account and report each step",
    )
    canary.add_argument("--account", help="default: WHATSAPP_WEB_ACCOUNT")
    canary.add_argument("--to", required=True, help="the test number, e.g. +919812345678")
    canary.add_argument("--text", help="default: 'SHVYA canary <random>'")
    dkim = commands.add_parser(
        "email-dkim-key",
        help="make or import a company's DKIM key for a sending domain and print its DNS record",
    )
    dkim.add_argument("--company", required=True, type=uuid.UUID, help="the company's id")
    dkim.add_argument("--domain", required=True, help="the From domain the key signs for")
    dkim.add_argument("--selector", required=True, help="the DKIM selector, e.g. shvya1")
    dkim.add_argument("--key-file", type=Path, help="an existing RSA private key (PEM) to import")
    dkim.add_argument("--bits", type=int, default=2048, help="size of a new key (default 2048)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command is None:
        from shvya_dispatch.app import main as run_service

        run_service()
        return
    if args.command == "email-dkim-key":
        from shvya_common.ops import preflight_database

        if code := preflight_database():  # PostgreSQL down: say so (exit 3), no traceback
            sys.exit(code)
        sys.exit(email_dkim_key(args))
    from shvya_dispatch.web_cli import main_for

    sys.exit(main_for(args.command, args))


def email_dkim_key(args: argparse.Namespace) -> int:
    from shvya_common.db import create_pool
    from shvya_dispatch.channels.dkim import (
        dns_record,
        generate_private_key,
        key_context,
        normalise_private_key,
    )
    from shvya_dispatch.repository import store_dkim_key
    from shvya_dispatch.settings import DispatchSettings

    settings = DispatchSettings()
    box = settings.secret_box()
    if box is None:
        print("error: set SECRETS_KEYS first (`shvya keygen` prints a key)", file=sys.stderr)
        return 2
    domain = args.domain.strip().lower()
    try:
        pem = (
            normalise_private_key(args.key_file.read_bytes())
            if args.key_file
            else generate_private_key(args.bits)
        )
    except (OSError, ValueError, TypeError) as err:
        print(f"error: cannot use that key: {err}", file=sys.stderr)
        return 2
    encrypted = box.encrypt(pem.decode(), key_context(args.company, domain))

    async def save() -> bool:
        pool = await create_pool(settings.dsn, 1, 1)
        try:
            return await store_dkim_key(pool, args.company, domain, args.selector, encrypted)
        finally:
            await pool.close()

    if not asyncio.run(save()):
        print(f"error: no company {args.company}", file=sys.stderr)
        return 2
    print(f"Stored the DKIM key for {domain}. Publish this TXT record, then send:")
    record = dns_record(pem)
    # A TXT string holds at most 255 characters; resolvers join the strings of one record.
    strings = " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))
    print(f"{args.selector}._domainkey.{domain}. IN TXT {strings}")
    return 0
