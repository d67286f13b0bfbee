"""The bench's measurements, one function per row of the issue's targets. Each takes a running
`Stack` and returns its figures; none prints or decides pass/fail (run.py does)."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import httpx

from bench.stack import FakeModel, Refused, Stack, run_wrk, wait_until

Figures = dict[str, float]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def post_many(base: str, count: int, prefix: str, text: str, limit: int = 64) -> None:
    """`count` messages from `count` different leads, `limit` at a time."""
    gate = asyncio.Semaphore(limit)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one(i: int) -> None:
            async with gate:
                body = {
                    "phone_number": f"{prefix}{i:05d}"[:12],
                    "contact_name": f"Lead {i}",
                    "message_text": text,
                    "channel": "log",
                }
                response = await client.post("/inbound-message", json=body)
                if response.status_code != 200:
                    raise Refused(f"refused: ingest answered {response.status_code}")

        await asyncio.gather(*(one(i) for i in range(count)))


# Replies to the inbound messages posted since `start` whose body starts with a marker, with
# when each was recorded and how long after its inbound, in two statements whose plans do not
# depend on the statistics: the replies recorded since `start` (messages_company_created), then
# their inbound messages by primary key. A bare `body LIKE` scans every message (with the --big
# preload's 5,000,000, a second of database CPU per poll); one statement joining the inbound
# messages to their replies was planned, on statistics taken before the row posted anything, as
# a bitmap scan of every outbound message per inbound one: polled once a second through a
# 3,000-message drain, ten scans per message and ~66,000 index entries read, more of the
# database's CPU than any statement of SHVYA's in the row it measured.
REPLIES = """
    SELECT reply_to_id, extract(epoch FROM sent_at) AS t FROM messages
    WHERE company_id = $1 AND created_at >= $2 AND direction = 'outbound'
      AND sent_at IS NOT NULL AND reply_to_id IS NOT NULL
"""
ANSWERED = """
    SELECT id, extract(epoch FROM created_at) AS t FROM messages
    WHERE id = ANY($1::uuid[]) AND body LIKE $2
"""


@dataclass(frozen=True)
class Since:
    """The default company and the database's clock, taken before a row posts anything: what
    the row's polls are bounded by."""

    company_id: uuid.UUID
    start: datetime

    @classmethod
    async def now(cls, db_url: str) -> Since:
        conn = await asyncpg.connect(db_url)
        try:
            row = await conn.fetchrow(
                "SELECT (SELECT id FROM companies ORDER BY created_at LIMIT 1) AS company,"
                " now() AS start"
            )
        finally:
            await conn.close()
        return cls(row["company"], row["start"])

    async def replies(self, conn: asyncpg.Connection, marker: str) -> list[dict[str, float]]:
        """Each reply's `t` (epoch seconds it was recorded sent) and `ms` (after its inbound)."""
        sent = {
            r["reply_to_id"]: float(r["t"])
            for r in await conn.fetch(REPLIES, self.company_id, self.start)
        }
        if not sent:
            return []
        inbound = await conn.fetch(ANSWERED, list(sent), marker + "%")
        return [{"t": sent[r["id"]], "ms": (sent[r["id"]] - float(r["t"])) * 1000} for r in inbound]


async def replies_recorded(db_url: str, since: Since, marker: str) -> list[float]:
    """Epoch seconds at which each reply to messages whose body starts with `marker` was
    recorded."""
    conn = await asyncpg.connect(db_url)
    try:
        return [float(r["t"]) for r in await since.replies(conn, marker)]
    finally:
        await conn.close()


def ingest_alone(stack: Stack, seconds: int) -> Figures:
    """POST /inbound-message with ingest alone (jobs wait in JetStream)."""
    stack.start("ingest")
    return run_wrk(f"{stack.url}/inbound-message", seconds)


def ingest_with_everything(stack: Stack, seconds: int) -> Figures:
    """POST /inbound-message while engage, dispatch and the scheduler work through what it
    files, as in production (offline responder, log channel)."""
    stack.start_all()
    return run_wrk(f"{stack.url}/inbound-message", seconds, "post_leads.lua")


async def outstanding(db_url: str) -> int:
    """Work still in hand: jobs waiting or running, and sends not yet made."""
    conn = await asyncpg.connect(db_url)
    try:
        count: int = await conn.fetchval(
            "SELECT (SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing'))"
            " + (SELECT count(*) FROM messages WHERE direction = 'outbound'"
            "    AND status IN ('queued', 'sending'))"
        )
        return count
    finally:
        await conn.close()


async def drain(stack: Stack, timeout: float = 600) -> None:
    """Let every service finish what an earlier row left (with every service running), so the
    next row measures its own work, not a leftover backlog."""
    stack.start_all()
    await wait_until(
        lambda: outstanding(stack.pg.url), lambda n: n == 0, timeout, "the backlog drained", 1.0
    )


async def pipeline(stack: Stack, model: FakeModel, messages: int, tag: str) -> Figures:
    """A backlog of `messages` from distinct leads, then engage (against the fake model) and
    dispatch drain it: replies recorded per second over the middle 90% of the drain, and the
    most model calls in flight at once."""
    for name in ("engage", "dispatch"):
        stack.stop_service(name)
    if "ingest" not in stack.procs:
        stack.start("ingest")
    if "scheduler" not in stack.procs:
        stack.start("scheduler")
    marker = f"pipeline {tag}:"
    prefix = {"300ms": "+140455", "1000ms": "+140456"}.get(tag, "+140457")
    since = await Since.now(stack.pg.url)
    await post_many(stack.url, messages, prefix, f"{marker} blue one?")
    model.stats(reset_peak=True)
    stack.start("engage", model.env())
    stack.start("dispatch")
    await wait_until(
        lambda: replies_recorded(stack.pg.url, since, marker),
        lambda done: len(done) >= messages,
        600,
        f"{messages} replies ({tag})",
        every=1.0,
    )
    times = sorted(await replies_recorded(stack.pg.url, since, marker))
    first, last = pct(times, 0.05), pct(times, 0.95)
    middle = sum(1 for t in times if first <= t <= last)
    rate = middle / max(last - first, 1e-6)
    return {"rps": rate, "in_flight_peak": float(model.stats()["peak_in_flight"])}


async def end_to_end(stack: Stack, count: int, rate: float) -> Figures:
    """`count` messages at `rate`/s with every service running (offline responder): inbound
    created_at → reply sent_at, read from the database."""
    stack.start_all()
    marker = f"e2e {uuid.uuid4().hex[:6]}"
    since = await Since.now(stack.pg.url)
    # aiohttp, not httpx, as the load generator: httpcore's pool re-scans every queued request
    # on each completion, so once a few hundred wait the client spends its CPU there and stops
    # sending bodies (ingest then waits for them); aiohttp's connector does not.
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=30)
    statuses: list[int] = []
    async with aiohttp.ClientSession(stack.url, connector=connector, timeout=timeout) as client:

        async def post(body: dict[str, str]) -> None:
            async with client.post("/inbound-message", json=body) as response:
                await response.read()
                statuses.append(response.status)

        tasks = []
        started = time.monotonic()
        for i in range(count):
            body = {
                "phone_number": f"+1303555{i:04d}",
                "contact_name": "Latency",
                "message_text": f"{marker} ping {i}",
                "channel": "log",
            }
            tasks.append(asyncio.create_task(post(body)))
            # A steady rate: each request at its own moment, not bursts.
            delay = started + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*tasks)
    if len(statuses) != count or any(status != 200 for status in statuses):
        raise Refused("refused: some inbound messages were not accepted in the end-to-end run")
    conn = await asyncpg.connect(stack.pg.url)
    try:

        async def latencies() -> list[float]:
            return [float(r["ms"]) for r in await since.replies(conn, marker)]

        values = await wait_until(
            latencies, lambda v: len(v) >= count, 120, "e2e replies", every=1.0
        )
    finally:
        await conn.close()
    return {
        "count": float(len(values)),
        "p50": statistics.median(values),
        "p99": pct(values, 0.99),
        "max": max(values),
    }


async def priority_probe(
    stack: Stack, model: FakeModel, backlog: int, probes: int, rate: float = 25.0
) -> Figures:
    """`backlog` ai.summary jobs (P2: priority 90) for leads with a conversation, queued for
    engage against a slow model; then `probes` inbound messages, each an ai.engage (100):
    how long each waits from its row's creation to its claim."""
    for name in ("engage", "dispatch"):
        stack.stop_service(name)
    if "ingest" not in stack.procs:
        stack.start("ingest")
    conn = await asyncpg.connect(stack.pg.url)
    try:
        company_id = await conn.fetchval("SELECT id FROM companies ORDER BY created_at LIMIT 1")
        await conn.execute(
            """
            WITH l AS (
                INSERT INTO leads (company_id, phone_e164, contact_name)
                SELECT $1, '+1606' || lpad(g::text, 7, '0'), 'Backlog ' || g
                FROM generate_series(1, $2) g RETURNING id
            )
            INSERT INTO messages (company_id, lead_id, direction, channel, body, status)
            SELECT $1, id, 'inbound', 'log', 'what does the warranty cover?', 'received' FROM l
            """,
            company_id,
            backlog,
        )
        leads = [
            r["id"]
            for r in await conn.fetch("SELECT id FROM leads WHERE contact_name LIKE 'Backlog %'")
        ]
    finally:
        await conn.close()
    await _enqueue_summaries(stack, company_id, leads)
    stack.start("engage", model.env())
    stack.start("dispatch")
    marker = f"probe {uuid.uuid4().hex[:6]}"
    since = await Since.now(stack.pg.url)
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
        for i in range(probes):
            response = await client.post(
                "/inbound-message",
                json={
                    "phone_number": f"+1707555{i:04d}",
                    "message_text": f"{marker} {i}",
                    "channel": "log",
                },
            )
            if response.status_code != 200:
                raise Refused(f"refused: a probe was answered {response.status_code}")
            await asyncio.sleep(1 / rate)
    conn = await asyncpg.connect(stack.pg.url)
    try:

        async def waits() -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(
                "SELECT extract(epoch FROM (j.started_at - j.created_at)) * 1000 AS ms"
                " FROM messages m JOIN jobs j ON j.id = m.job_id"
                " WHERE m.company_id = $1 AND m.created_at >= $2 AND m.body LIKE $3"
                " AND j.started_at IS NOT NULL",
                since.company_id,
                since.start,
                marker + "%",
            )
            return rows

        rows = await wait_until(waits, lambda r: len(r) >= probes, 120, "probe claims", every=1.0)
        left = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE task_name = 'ai.summary' AND status = 'queued'"
        )
    finally:
        await conn.close()
    values = [float(r["ms"]) for r in rows]
    return {
        "p50": statistics.median(values),
        "p99": pct(values, 0.99),
        "backlog_left": float(left),
    }


async def _enqueue_summaries(stack: Stack, company_id: uuid.UUID, leads: list[uuid.UUID]) -> None:
    """ai.summary jobs through the bus itself: committed, then published (gathered)."""
    import nats

    from shvya_common.bus import JobBus, NewJob
    from shvya_common.contracts import Topology
    from shvya_common.db import create_pool

    pool = await create_pool(stack.pg.url, 1, 4)
    nc = await nats.connect(stack.nats.url)
    try:
        bus = JobBus(pool, nc, nc.jetstream(), Topology("shvya"), service="bench")
        for start in range(0, len(leads), 1000):
            async with bus.unit() as unit:
                await unit.enqueue_jobs(
                    [
                        NewJob(
                            "ai.summary",
                            {"lead_id": str(lead), "reason": "manual"},
                            company_id=company_id,
                            lead_id=lead,
                        )
                        for lead in leads[start : start + 1000]
                    ]
                )
        await bus.close()
    finally:
        await nc.close()
        await pool.close()


async def queue_stats(stack: Stack, requests: int = 200) -> Figures:
    """GET /queue/stats as the operator, one request at a time."""
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    values: list[float] = []
    async with httpx.AsyncClient(base_url=stack.url, timeout=30, headers=headers) as client:
        for _ in range(requests):
            started = time.perf_counter()
            response = await client.get("/queue/stats")
            values.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise Refused(f"refused: /queue/stats answered {response.status_code}")
        total = float(response.json()["total"])
    return {"p50": statistics.median(values), "p99": pct(values, 0.99), "total": total}


class _RandomEmbedder:
    """Query vectors for the search row: random, as the chunks' are (no model needed)."""

    name = "bench:random@384"
    dimensions = 384

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [[random.random() - 0.5 for _ in range(384)] for _ in texts]

    async def aclose(self) -> None:
        return None


async def kb_search(db_url: str, company_id: str, queries: int = 200) -> Figures:
    """Hybrid retrieval (keyword + HNSW vector search, fused) over the company's chunks."""
    from shvya_common.db import create_pool
    from shvya_common.knowledge import retrieve

    pool = await create_pool(db_url, 1, 2)
    words = ["battery warranty", "inverter price", "roof install", "export tariff", "charger"]
    values: list[float] = []
    modes: set[str] = set()
    try:
        embedder: Any = _RandomEmbedder()
        # Not timed: the first searches after the bulk load and the index build read the table
        # and the freshly built indexes from disk into shared buffers, once.
        for query in words * 2:
            await retrieve(pool, uuid.UUID(company_id), query, k=4, embedder=embedder)
        for i in range(queries):
            started = time.perf_counter()
            found = await retrieve(
                pool, uuid.UUID(company_id), words[i % len(words)], k=4, embedder=embedder
            )
            values.append((time.perf_counter() - started) * 1000)
            modes.add(found.mode)
    finally:
        await pool.close()
    if "hybrid" not in modes:
        raise Refused(f"refused: the search row did not run hybrid searches ({modes})")
    return {"p50": statistics.median(values), "p99": pct(values, 0.99)}


_EMBEDDER_RSS = """
import asyncio, json
from pathlib import Path

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

import shvya_engage.app  # what engage imports before any job
before = rss()
from shvya_common.knowledge.embedders import LocalEmbedder
asyncio.run(LocalEmbedder().embed(["how long is the warranty?"]))
print(json.dumps({"before": before, "after": rss()}))
"""


def offline_embedder_cost() -> Figures | None:
    """Resident memory the offline embedder adds to a process once it has embedded a text
    (None when it is not installed: then it adds nothing)."""
    import json
    import subprocess
    import sys

    from shvya_common.knowledge.settings import offline_embedder_installed

    if not offline_embedder_installed():
        return None
    out = subprocess.run(
        [sys.executable, "-c", _EMBEDDER_RSS], capture_output=True, text=True, check=True
    ).stdout
    figures: Figures = json.loads(out.strip().splitlines()[-1])
    return figures
