"""`python -m shvya_dispatch.pauses`: list channel pauses, and lift one by hand.

A pause starts when a provider refuses a company's sender (WhatsApp Cloud 190, 368, 131048).
It ends on its own in two cases: a block pause (368, 131048) at its `paused_until`, and a token
pause (190) as soon as dispatch runs with other credentials. This command is for the rest: an
operator who fixed the cause and wants the company's deferred sends to flow at their next
re-check.

    python -m shvya_dispatch.pauses list [--all]
    python -m shvya_dispatch.pauses resume COMPANY_ID [--channel whatsapp_cloud]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence

from shvya_common.db import create_pool
from shvya_dispatch.repository import PolicyRepository
from shvya_dispatch.settings import DispatchSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shvya_dispatch.pauses", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="pauses in force (with --all, lifted ones too)")
    listing.add_argument("--all", action="store_true", help="include lifted and expired pauses")
    resume = sub.add_parser("resume", help="lift a company's pause on a channel now")
    resume.add_argument("company_id", type=uuid.UUID)
    resume.add_argument("--channel", default="whatsapp_cloud")
    return parser


async def run_command(argv: Sequence[str], database_url: str) -> tuple[int, str]:
    """Run one command; returns (exit code, output)."""
    args = _parser().parse_args(argv)
    pool = await create_pool(database_url, 1, 2)
    try:
        repo = PolicyRepository(pool)
        if args.command == "list":
            rows = await repo.list_pauses(include_lifted=args.all)
            if not rows:
                return 0, "no channel pauses"
            lines = []
            for r in rows:
                until = (
                    "until the credentials change"
                    if r["until_credentials_change"]
                    else f"until {r['paused_until']:%Y-%m-%d %H:%M %Z}"
                    if r["paused_until"]
                    else "until resumed"
                )
                state = "in force" if r["in_force"] else "lifted"
                lines.append(
                    f"{r['company_id']}  {r['company_name']}  {r['channel']}"
                    f"  code {r['error_code']}  since {r['paused_at']:%Y-%m-%d %H:%M %Z}"
                    f"  {until}  [{state}]\n    {r['reason']}"
                )
            return 0, "\n".join(lines)
        if await repo.lift_pause(args.company_id, args.channel, by="operator"):
            return 0, f"lifted the {args.channel} pause of company {args.company_id}"
        return 1, f"company {args.company_id} has no {args.channel} pause in force"
    finally:
        await pool.close()


def main() -> None:
    settings = DispatchSettings()
    code, output = asyncio.run(run_command(sys.argv[1:], settings.dsn))
    print(output)
    sys.exit(code)


if __name__ == "__main__":
    main()
