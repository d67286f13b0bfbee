"""`make bench-relay`: what committing first (the transactional outbox of issue 7) costs ingest,
measured in one run against the code just before it.

Three versions of the code, each exported from git and run on its own fresh NATS and
PostgreSQL with the same environment as `make bench`:

- **before**: the parent of the outbox commit, where ingest published the job to JetStream inside
  its transaction and committed afterwards (the dual write issue 7 removed);
- **outbox**: the commit that made the job row the outbox (commit, then publish; a relay and a
  reconciler republish what a publish lost);
- **now**: HEAD, for where ingest stands today.

For each: `POST /inbound-message` with ingest alone under wrk (64 connections, as bench/run.py's
"ingest alone" row), in `BENCH_RELAY_ROUNDS` rounds taken in turn (before, outbox, now, before,
...) so a drift of the machine falls on every version alike, and the best round kept; then
end-to-end latency (inbound to reply recorded, offline responder, every service running) at a
rate the 2 cores carry without queueing (`BENCH_RELAY_E2E_RATE`, 50 msg/s), where the figure is
the hops' own cost. The yardstick is measured before and after: a run on a busy machine is
refused, as in `make bench`. The table goes to docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import rows  # noqa: E402
from bench.campaign import write_section  # noqa: E402
from bench.run import DURATION, step, yardstick  # noqa: E402
from bench.stack import Refused, Stack, check_quiet, export_ref, run_bench, stop  # noqa: E402

OUTBOX_COMMIT = os.environ.get("BENCH_RELAY_OUTBOX", "4df6896")
ROUNDS = int(os.environ.get("BENCH_RELAY_ROUNDS", "3"))
E2E_RATE = float(os.environ.get("BENCH_RELAY_E2E_RATE", "50"))
E2E_MESSAGES = int(os.environ.get("BENCH_RELAY_E2E_MESSAGES", "1000"))
WARM_MESSAGES = 50
MARKER = "<!-- bench:relay -->"
# Committing first may cost ingest at most this much of its throughput (issue 7).
BUDGET = 0.10


def resolve(ref: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def versions() -> dict[str, str]:
    return {
        "before": resolve(f"{OUTBOX_COMMIT}^"),
        "outbox": resolve(OUTBOX_COMMIT),
        "now": resolve("HEAD"),
    }


def ingest_round(stack: Stack) -> dict[str, float]:
    """One ingest-alone measurement on a fresh start of that version's ingest."""
    try:
        return rows.ingest_alone(stack, DURATION)
    finally:
        proc = stack.procs.pop("ingest", None)
        if proc is not None:
            stop(proc)
        asyncio.run(stack.reset())


def measure(tmp: Path, refs: dict[str, str]) -> dict[str, dict]:
    # A worker of an older version may not report its consumers before it has work: wait for
    # its metrics server, then warm every service with answered messages before measuring.
    stacks = {
        name: Stack(
            f"relay-{name}", tmp, export_ref(ref, tmp / f"src-{name}"), ready_metric="shvya_"
        )
        for name, ref in refs.items()
    }
    for stack in stacks.values():
        stack.start_servers()
    try:
        ingest: dict[str, list[dict[str, float]]] = {name: [] for name in stacks}
        for n in range(ROUNDS):
            for name, stack in stacks.items():
                step(f"ingest alone, {name} ({refs[name]}), round {n + 1} of {ROUNDS}")
                ingest[name].append(ingest_round(stack))
                step(f"  {ingest[name][-1]}")
        e2e: dict[str, dict[str, float]] = {}
        for name, stack in stacks.items():
            step(f"end-to-end at {E2E_RATE:.0f} msg/s, {name} ({refs[name]})")
            asyncio.run(rows.end_to_end(stack, WARM_MESSAGES, E2E_RATE))
            e2e[name] = asyncio.run(rows.end_to_end(stack, E2E_MESSAGES, E2E_RATE))
            stack.stop_services()
            step(f"  {e2e[name]}")
    finally:
        for stack in stacks.values():
            stack.stop()
    return {
        name: {
            "ref": refs[name],
            "ingest_rounds": ingest[name],
            "ingest": max(ingest[name], key=lambda r: r["rps"]),
            "e2e": e2e[name],
        }
        for name in stacks
    }


def _cost(who: str, cost: float) -> str:
    if cost <= 0:
        return f"{who} cost it nothing ({-cost:.0%} faster)"
    return f"{who} cost it {cost:.0%} ({'within' if cost <= BUDGET else 'over'} the budget)"


def report(results: dict[str, dict], yard: float, drift: float, minutes: float) -> str:
    before = results["before"]["ingest"]["rps"]
    cost = 1 - results["outbox"]["ingest"]["rps"] / before
    lines = [
        ("yardstick (minimal FastAPI handler)", f"{yard:,.0f} req/s", "", ""),
    ]
    labels = {
        "before": "before: publish inside the transaction",
        "outbox": "outbox: commit, then publish",
        "now": "now (HEAD)",
    }
    for name, res in results.items():
        ing, e2e = res["ingest"], res["e2e"]
        rounds = ", ".join(f"{r['rps']:,.0f}" for r in res["ingest_rounds"])
        lines.append(
            (
                f"{labels[name]} (`{res['ref']}`)",
                f"{ing['rps']:,.0f} req/s ({ing['rps'] / yard:.2f}×), p99 {ing['p99']:.1f} ms",
                f"rounds {rounds}",
                f"p50 {e2e['p50']:.1f} ms, p99 {e2e['p99']:.1f} ms",
            )
        )
    now = 1 - results["now"]["ingest"]["rps"] / before
    verdict = (
        f"Committing first, against the dual write it replaced (a budget of {BUDGET:.0%} of"
        f" ingest's throughput): {_cost('the outbox commit', cost)}; {_cost('HEAD', now)}."
    )
    for line in lines:
        print(" | ".join(line))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join("| " + " | ".join(line) + " |" for line in lines)
    section = (
        f"{MARKER}\n### Latest `make bench-relay` ({stamp}, {os.cpu_count()} cores)\n\n"
        "| version | ingest alone, best of its rounds | each round (req/s) |"
        f" end-to-end at {E2E_RATE:.0f} msg/s |\n|---|---|---|---|\n{table}\n\n"
        f"{verdict} The yardstick moved {drift:.0%} between the start and the end of the run,"
        f" which took {minutes:.0f} minutes.\n\n"
        f"Raw: `{json.dumps(results)}`\n{MARKER}\n"
    )
    print(f"\n{verdict} The yardstick moved {drift:.0%}.")
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-write", action="store_true", help="print the table, leave docs/performance.md"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shvya-bench-relay-"))
    started = time.monotonic()
    refs = versions()
    step(f"yardstick: minimal FastAPI handler, {DURATION} s")
    first = yardstick(DURATION)
    check_quiet(first)
    results = measure(tmp, refs)
    step("yardstick again")
    last = yardstick(DURATION)
    try:
        drift = check_quiet(first, last)
    except Refused as refused:
        raise Refused(f"{refused} (logs in {tmp}); docs/performance.md was left alone") from None
    yard = (first["rps"] + last["rps"]) / 2
    section = report(results, yard, drift, (time.monotonic() - started) / 60)
    if not args.no_write:
        write_section(section, MARKER)
    print(f"logs kept in {tmp}")


if __name__ == "__main__":
    run_bench(main)
