"""`make faults`: every scenario of issue 7's fault suite, in its long form.

Starts its own PostgreSQL (and a NATS per scenario, a 3-node cluster for the cluster scenario)
in a temporary folder, runs each scenario against the four services as separate processes with
2,000 messages from distinct leads (the PostgreSQL outage also for 3 minutes), prints one table
row per scenario, and exits non-zero if any row is not held.

    make faults
    .venv/bin/python bench/faults/run.py --only nats-wipe --only pg-outage-10s --messages 300

Logs of every process stay under the printed folder for a post-mortem (`--keep` keeps the
folder even when every row held).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import tasks  # noqa: E402
from tests.faults.accounting import Row, table  # noqa: E402
from tests.faults.harness import Lab  # noqa: E402
from tests.faults.scenarios import Budget, long_form  # noqa: E402

# The poison scenario enqueues test.work, a task that exists only for tests (as in conftest).
tasks.register()


def parse(argv: list[str]) -> argparse.Namespace:
    names = list(long_form(2000, 180))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        help=f"run only this scenario (repeatable); one of: {', '.join(names)}"
        " (pg-outage-<N>s follows --pg-seconds)",
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages per load scenario")
    parser.add_argument("--rate", type=float, default=60.0, help="messages started per second")
    parser.add_argument(
        "--pg-seconds", type=float, default=180.0, help="the long PostgreSQL outage"
    )
    parser.add_argument(
        "--stall", type=float, default=60.0, help="give up waiting after this long unchanged"
    )
    parser.add_argument(
        "--deadline", type=float, default=600.0, help="longest wait for quiescence, seconds"
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs folder")
    return parser.parse_args(argv)


async def main(argv: list[str]) -> int:
    args = parse(argv)
    # The fake Graph server logs a traceback for each request cut off by a killed dispatch.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    entries = long_form(args.messages, args.pg_seconds)
    chosen = args.only or list(entries)
    unknown = [n for n in chosen if n not in entries]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(entries)}")
        return 2
    # Long enough for a 2,000-message backlog to drain on two busy cores after its fault.
    budget = Budget(quiesce_deadline=args.deadline, stall=args.stall, give_up=120.0, rate=args.rate)
    folder = Path(tempfile.mkdtemp(prefix="shvya-faults-"))
    print(f"fault suite: {len(chosen)} scenario(s), logs in {folder}", flush=True)
    rows: list[Row] = []
    async with Lab(folder) as lab:
        for name in chosen:
            entry = entries[name]
            kwargs = dict(entry.kwargs)
            if entry.sized:
                kwargs["messages"] = args.messages
            print(f"--> {name}", flush=True)
            started = time.monotonic()
            row = await entry.run(lab, budget=budget, **kwargs)
            row.seconds = time.monotonic() - started
            rows.append(row)
            print(row.explain(), flush=True)
    print()
    print(table(rows))
    print()
    print(table(rows, markdown=True))
    held = all(r.held for r in rows)
    if held and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"\nlogs: {folder}")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
