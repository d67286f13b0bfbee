"""`python -m shvya_dispatch` runs the dispatch service; `python -m shvya_dispatch
whatsapp-web-login --account NAME` links a WhatsApp Web account by QR code and exits.

Stop the dispatch service (or at least its WhatsApp Web channel) before logging an account in:
Chromium lets only one process open a profile at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command is None:
        from shvya_dispatch.app import main as run_service

        run_service()
        return
    sys.exit(whatsapp_web_login(args))


def whatsapp_web_login(args: argparse.Namespace) -> int:
    from shvya_dispatch.channels.whatsapp_web import LoginTimeout, login
    from shvya_dispatch.settings import DispatchSettings

    account = args.account
    try:
        settings = DispatchSettings()
        account = account or settings.whatsapp_web_account
        asyncio.run(
            login(
                settings,
                account,
                qr_path=args.qr_path,
                wait_seconds=args.timeout,
                settle_seconds=args.settle_seconds,
                say=lambda line: print(line, flush=True),
            )
        )
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
