"""`python -m shvya_dispatch` runs the dispatch service; `python -m shvya_dispatch
whatsapp-web-login --account NAME` links a WhatsApp Web account by QR code and exits;
`python -m shvya_dispatch email-dkim-key --company ID --domain D --selector S` makes (or, with
`--key-file`, imports) a company's DKIM key, stores it encrypted and prints the DNS record.

Stop the dispatch service (or at least its WhatsApp Web channel) before logging an account in:
Chromium lets only one process open a profile at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from playwright.async_api import Error as PlaywrightError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shvya_dispatch",
        description="Without a command, run the dispatch service.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    login = commands.add_parser(
        "whatsapp-web-login",
        help="link a WhatsApp Web account: save its QR code as a PNG and wait until it is scanned",
    )
    login.add_argument(
        "--account", help="account (browser profile) name; default: WHATSAPP_WEB_ACCOUNT"
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
        sys.exit(email_dkim_key(args))
    sys.exit(whatsapp_web_login(args))


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
        pool = await create_pool(settings.database_url, 1, 1)
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


def whatsapp_web_login(args: argparse.Namespace) -> int:
    from shvya_dispatch.channels.whatsapp_web import LoginTimeout, login
    from shvya_dispatch.settings import DispatchSettings

    account = args.account
    try:
        settings = DispatchSettings()
        account = account or settings.whatsapp_web_account
        asyncio.run(_login_recorded(settings, account, args, login))
    except LoginTimeout as err:
        print(f"error: {err}; run the command again for a fresh QR code", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PlaywrightError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(
            f"error: could not open WhatsApp Web for account {account!r}: {first} "
            "(is the dispatch service using this profile right now?)",
            file=sys.stderr,
        )
        return 2
    return 0


async def _login_recorded(
    settings: Any, account: str, args: argparse.Namespace, login: Any
) -> None:
    """Run the login, keeping each QR code and the outcome in the database too, where the
    console (through ingest's API) shows them to the company's admin. Without a reachable
    database the login still works from the PNG file."""
    from shvya_common.db import create_pool
    from shvya_common.whatsapp.web_logins import store_outcome, store_qr
    from shvya_dispatch.channels.whatsapp_web import LoginTimeout

    try:
        pool = await asyncio.wait_for(create_pool(settings.database_url, 1, 2), 5)
    except Exception as err:
        print(
            f"note: the QR code is not shown in the console (no database: {type(err).__name__})",
            file=sys.stderr,
            flush=True,
        )
        pool = None

    async def on_qr(png: bytes) -> None:
        if pool is not None:
            await store_qr(pool, account, png)

    try:
        await login(
            settings,
            account,
            qr_path=args.qr_path,
            wait_seconds=args.timeout,
            settle_seconds=args.settle_seconds,
            say=lambda line: print(line, flush=True),
            on_qr=on_qr,
        )
        if pool is not None:
            await store_outcome(pool, account, "linked")
    except LoginTimeout as err:
        if pool is not None:
            await store_outcome(pool, account, "timed_out", str(err))
        raise
    except Exception as err:
        if pool is not None:
            await store_outcome(pool, account, "failed", f"{type(err).__name__}")
        raise
    finally:
        if pool is not None:
            await pool.close()
