"""`make bench-campaign`: a campaign to 10,000 leads through the log channel, on embedded
defaults, and what it does to replies meanwhile. In one run on this machine:

1. the yardstick (bench/run.py's minimal FastAPI handler under wrk), before and after; a run
   whose two yardsticks differ by more than 15% was made on a busy machine and is refused;
2. P1 reply latency while idle, after a warm-up: inbound → `ai.engage` → reply recorded
   (offline responder, log channel), at a steady rate, from the database (inbound
   `created_at` → reply `sent_at`);
3. a campaign to 10,000 leads with the company's rate set high (so the figures are capacity,
   not the cap): time until every recipient's send is requested (enqueued), sends per second
   through dispatch, the largest batch one run put on the bus, and P1 latency measured again
   while it sends;
4. the same campaign at 3,000/min and at the default per-company rate
   (CAMPAIGN_RATE_PER_MINUTE, 600/min): P1 latency during its first seconds, then it is
   cancelled.

P1 must stay within 2x its idle p50 while a campaign runs. Figures go to the
`<!-- bench:campaign -->` section of docs/performance.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.rows import Since
from bench.run import DURATION, Stack, yardstick
from bench.stack import Refused, check_quiet, run_bench, wait_until
from shvya_common.apikeys import new_key

ROOT = Path(__file__).resolve().parent.parent
LEADS = int(os.environ.get("BENCH_CAMPAIGN_LEADS", "10000"))
FAST_RATE = int(os.environ.get("BENCH_CAMPAIGN_RATE", "60000"))  # per minute
DEFAULT_RATE = 600
MIDDLE_RATE = int(os.environ.get("BENCH_CAMPAIGN_MIDDLE_RATE", "3000"))
P1_MESSAGES = int(os.environ.get("BENCH_P1_MESSAGES", "200"))
P1_RATE = float(os.environ.get("BENCH_P1_RATE", "20"))
RESERVED = os.environ.get("BENCH_P1_RESERVED_SLOTS", "")
TICK_SECONDS = 1.0
BATCH_MAX = 500
MARKER = "<!-- bench:campaign -->"
# distinct leads per phase
AREA = {"warm": 200, "idle": 201, "during": 202, "middle": 203, "paced": 204}
WARM_MESSAGES = 60


class CampaignStack(Stack):
    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "CAMPAIGN_TICK_SECONDS": str(TICK_SECONDS),
            "CAMPAIGN_BATCH_MAX": str(BATCH_MAX),
            "CAMPAIGN_RATE_PER_MINUTE": str(DEFAULT_RATE),
            # Slots of each worker that only P1 (priority 95+) may take; a quarter by default.
            **({"P1_RESERVED_SLOTS": RESERVED} if RESERVED else {}),
        }


async def seed(db_url: str, rate: int, name: str) -> str:
    """A company (no quiet hours, its campaign rate) with LEADS leads that have an address;
    returns an admin API key of the company."""
    conn = await asyncpg.connect(db_url)
    try:
        settings = {
            "policies": {"email": {"quiet_hours": None}},
            "campaigns": {"rate_per_minute": rate},
        }
        company = await conn.fetchval(
            "INSERT INTO companies (name, settings) VALUES ($1, $2::jsonb) RETURNING id",
            name,
            json.dumps(settings),
        )
        await conn.execute(
            "INSERT INTO leads (company_id, email, contact_name, timezone)"
            " SELECT $1, 'lead' || i || '@bench.example', 'Lead ' || i,"
            " (ARRAY['Europe/Berlin', 'America/New_York', 'Asia/Kolkata'])[1 + i % 3]"
            " FROM generate_series(1, $2) AS i",
            company,
            LEADS,
        )
        key, prefix, digest = new_key()
        await conn.execute(
            "INSERT INTO api_keys (company_id, name, role, prefix, key_hash, created_by)"
            " VALUES ($1, 'bench', 'admin', $2, $3, 'bench')",
            company,
            prefix,
            digest,
        )
        return key
    finally:
        await conn.close()


async def p1_latency(
    base: str, db_url: str, tag: str, count: int = P1_MESSAGES
) -> dict[str, float]:
    """`count` inbound messages at P1_RATE/s; inbound → reply `sent_at`, in ms."""
    since = await Since.now(db_url)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        tasks = []
        for i in range(count):
            body = {
                "phone_number": f"+1{AREA[tag]}555{i:04d}",
                "contact_name": "Latency",
                "message_text": f"{tag} {i}",
                "channel": "log",
            }
            tasks.append(asyncio.create_task(client.post("/inbound-message", json=body)))
            await asyncio.sleep(1 / P1_RATE)
        responses = await asyncio.gather(*tasks)
    if not all(r.status_code == 200 for r in responses):
        raise SystemExit(f"{tag}: some inbound messages were not accepted")
    conn = await asyncpg.connect(db_url)
    try:
        # The figures come from recorded timestamps: polling once a second loses nothing.
        rows = await wait_until(
            lambda: since.replies(conn, f"{tag} "),
            lambda found: len(found) >= count,
            180,
            f"{tag}: {count} replies",
            every=1.0,
        )
    finally:
        await conn.close()
    values = sorted(float(r["ms"]) for r in rows)
    return {
        "count": len(values),
        "p50": statistics.median(values),
        "p99": values[min(len(values) - 1, int(len(values) * 0.99))],
        "last_reply_at": float(max(r["t"] for r in rows)),
    }


async def start_campaign(client: httpx.AsyncClient) -> str:
    body = {
        "name": "Bench",
        "template": {
            "subject": "{{ lead.first_name }}, our spring offer",
            "text": "Hi {{ lead.first_name }},\n\nSee https://example.com/spring",
            "html": "<p>Hi {{ lead.first_name }},</p><p><a href='https://example.com/spring'>Offer</a></p>",
        },
    }
    created = await client.post("/v1/campaigns", json=body)
    created.raise_for_status()
    cid: str = created.json()["id"]
    (await client.post(f"/v1/campaigns/{cid}/send")).raise_for_status()
    return cid


async def fast_campaign(stack: Stack) -> dict[str, float]:
    """The capacity run: enqueue time, sends per second, largest batch, P1 meanwhile."""
    key = await seed(stack.pg.url, FAST_RATE, "Bench fast")
    conn = await asyncpg.connect(stack.pg.url)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=stack.url, timeout=60, headers=headers) as client:
        t0 = time.monotonic()
        started_at = time.time()
        cid = await start_campaign(client)
        p1_task = asyncio.create_task(p1_latency(stack.url, stack.pg.url, "during"))
        enqueued_after = None
        deadline = t0 + 900
        while time.monotonic() < deadline:
            requested = await conn.fetchval(
                "SELECT count(*) FROM campaign_recipients WHERE campaign_id = $1"
                " AND status = 'requested'",
                cid,
            )
            if enqueued_after is None and requested >= LEADS:
                enqueued_after = time.monotonic() - t0
            logged = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE send_key LIKE $1 AND status = 'logged'",
                f"campaign:{cid}:%",
            )
            if logged >= LEADS:
                break
            await asyncio.sleep(0.25)
        else:
            raise SystemExit("the campaign did not finish within 15 minutes")
        during = await p1_task
    span = await conn.fetchrow(
        "SELECT extract(epoch FROM min(sent_at)) AS first, extract(epoch FROM max(sent_at)) AS last"
        " FROM messages WHERE send_key LIKE $1",
        f"campaign:{cid}:%",
    )
    batch = await conn.fetchval(
        "SELECT max((result->>'requested')::int) FROM jobs WHERE task_name = 'email.sequence'"
    )
    await conn.close()
    first, last = float(span["first"]), float(span["last"])
    return {
        "enqueue_seconds": enqueued_after or 0.0,
        "sends_per_second": LEADS / max(last - first, 1e-6),
        "campaign_seconds": last - started_at,
        "largest_batch": float(batch or 0),
        "p1_p50": during["p50"],
        "p1_p99": during["p99"],
        # P1 measured inside the campaign's sending, not after it.
        "p1_overlapped": float(during["last_reply_at"] <= last),
    }


async def paced_campaign(stack: Stack, rate: int, tag: str) -> dict[str, float]:
    """The same campaign with the company's rate at `rate`/min: P1 during its first seconds,
    then it is cancelled."""
    key = await seed(stack.pg.url, rate, f"Bench {tag}")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=stack.url, timeout=60, headers=headers) as client:
        cid = await start_campaign(client)
        await asyncio.sleep(2)
        during = await p1_latency(stack.url, stack.pg.url, tag)
        counts = (await client.get(f"/v1/campaigns/{cid}/counts")).json()
        await client.post(f"/v1/campaigns/{cid}/cancel")
    return {
        "rate_per_minute": float(rate),
        "p1_p50": during["p50"],
        "p1_p99": during["p99"],
        "sent_meanwhile": float(counts["sent"]),
    }


def run_stack(tmp: Path) -> dict[str, dict[str, float]]:
    stack = CampaignStack("campaign", tmp)
    stack.start_servers()
    try:
        for name in ("ingest", "engage", "dispatch", "scheduler"):
            stack.start(name)
        time.sleep(3)
        for name, proc in stack.procs.items():
            if proc.poll() is not None:  # e.g. a port taken between free_port() and bind
                log = (stack.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{name} exited at start-up:\n{log}")
        # Warm every service (pools, caches, the first replies) before the idle figure.
        asyncio.run(p1_latency(stack.url, stack.pg.url, "warm", WARM_MESSAGES))
        idle = asyncio.run(p1_latency(stack.url, stack.pg.url, "idle"))
        fast = asyncio.run(fast_campaign(stack))
        middle = asyncio.run(paced_campaign(stack, MIDDLE_RATE, "middle"))
        paced = asyncio.run(paced_campaign(stack, DEFAULT_RATE, "paced"))
    finally:
        stack.stop()
    return {"idle": idle, "fast": fast, "middle": middle, "paced": paced}


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="shvya-bench-campaign-"))
    print("[1/3] yardstick", flush=True)
    first = yardstick(DURATION)
    check_quiet(first)
    print(
        f"[2/3] P1 idle, campaign to {LEADS:,} leads (fast, then at the default rate)", flush=True
    )
    results = run_stack(tmp)
    print("[3/3] yardstick again", flush=True)
    last = yardstick(DURATION)
    drift = abs(first["rps"] - last["rps"]) / max(first["rps"], last["rps"])
    section = report(results, (first["rps"] + last["rps"]) / 2, drift)
    print(f"logs kept in {tmp}")
    try:
        check_quiet(first, last)
    except Refused as refused:
        raise Refused(
            f"{refused}: the figures above are not comparable and"
            " docs/performance.md was left alone"
        ) from None
    write_section(section)


def report(results: dict[str, dict[str, float]], yard: float, drift: float) -> str:
    """Print the figures; return the docs/performance.md section that holds them."""
    idle, fast = results["idle"], results["fast"]
    ratio = {k: results[k]["p1_p50"] / idle["p50"] for k in ("fast", "middle", "paced")}
    rows = [
        ("yardstick (minimal FastAPI handler)", f"{yard:,.0f} req/s", ""),
        (
            f"campaign to {LEADS:,} leads: all sends enqueued",
            f"{fast['enqueue_seconds']:.1f} s",
            f"runs of at most {int(fast['largest_batch'])}"
            f" ({BATCH_MAX} max, {TICK_SECONDS:.0f} s tick)",
        ),
        (
            "campaign sends through dispatch (log channel)",
            f"{fast['sends_per_second']:,.0f} sends/s",
            f"last send {fast['campaign_seconds']:.1f} s after /send",
        ),
        ("P1 reply latency, idle", f"p50 {idle['p50']:.0f} ms", f"p99 {idle['p99']:.0f} ms"),
        (
            f"P1 during the campaign (rate {FAST_RATE:,}/min, beyond what dispatch sends)",
            f"p50 {fast['p1_p50']:.0f} ms ({ratio['fast']:.2f}× idle)",
            f"p99 {fast['p1_p99']:.0f} ms",
        ),
    ]
    for key in ("middle", "paced"):
        res = results[key]
        rows.append(
            (
                f"P1 during the campaign (rate {res['rate_per_minute']:,.0f}/min)",
                f"p50 {res['p1_p50']:.0f} ms ({ratio[key]:.2f}× idle)",
                f"p99 {res['p1_p99']:.0f} ms; {res['sent_meanwhile']:,.0f} sends meanwhile",
            )
        )
    for row in rows:
        print(" | ".join(row))
    within = [k for k in ("fast", "middle", "paced") if ratio[k] <= 2]
    rates = {"fast": FAST_RATE, "middle": MIDDLE_RATE, "paced": DEFAULT_RATE}
    verdict = (
        "P1 stayed within 2× its idle p50 at "
        + (", ".join(f"{rates[k]:,}/min" for k in within) or "no rate measured")
        + "; not at "
        + (", ".join(f"{rates[k]:,}/min" for k in ratio if k not in within) or "any")
        + "."
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join("| " + " | ".join(r) + " |" for r in rows)
    section = (
        f"{MARKER}\n### Latest `make bench-campaign` ({stamp}, {os.cpu_count()} cores)\n\n"
        f"| what | figure | detail |\n|---|---|---|\n{table}\n\n"
        f"{verdict} The yardstick moved {drift:.0%} during the run."
        f" P1: {P1_MESSAGES} messages at {P1_RATE:.0f}/s each time.\n\n"
        f"Raw: `{json.dumps(results)}`\n{MARKER}\n"
    )
    print(f"\n{verdict} The yardstick moved {drift:.0%}.\nraw: {json.dumps(results)}")
    return section


def write_section(section: str, marker: str = MARKER) -> None:
    """Put `section` between its two `marker` lines in docs/performance.md (at the end the
    first time)."""
    doc = ROOT / "docs" / "performance.md"
    text = doc.read_text()
    if marker in text:
        start = text.index(marker)
        end = text.index(marker, start + len(marker)) + len(marker) + 1
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)
    print(f"written to {doc}")


if __name__ == "__main__":
    run_bench(main)
