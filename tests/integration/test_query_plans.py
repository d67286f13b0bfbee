"""The hot path's statements read the rows they work on, not the company's history: run on a
database with history, each plan node over `messages` or `jobs` returns a handful of rows.

A plan that joins on part of a key reads every row sharing that part: filing a batch once read
every message of the company's channel (and each one's job), so ingest slowed as the history
grew, and a database of 5,000,000 messages timed requests out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shvya_common.bus.ledgers import JobLedger, SendLedger
from shvya_common.db import create_pool
from shvya_dispatch.repository import _SEND_STATE
from shvya_engage.repository import _LOAD_REPLY
from shvya_ingest.repository import (
    FILE_SQL,
    InboundRow,
    IngestRepository,
    file_args,
)

HISTORY = 5000


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan, depth first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def returned(node: dict[str, Any]) -> float:
    """Rows (or index entries) a node returned in all its loops."""
    return float(node["Actual Rows"] * node["Actual Loops"])


def scans(plan: dict[str, Any], tables: set[str]) -> list[tuple[str, str, float]]:
    """(table, node type, rows it returned) for each node reading `tables`."""
    return [
        (n["Relation Name"], n["Node Type"], returned(n))
        for n in nodes(plan)
        if n.get("Relation Name") in tables
    ]


async def explain(conn, sql: str, *args, generic: bool = False) -> dict[str, Any]:
    """The plan of one run of `sql` as it ran (EXPLAIN ANALYZE; its writes rolled back); with
    `generic`, the generic plan a prepared statement settles on after its first runs."""
    tx = conn.transaction()
    await tx.start()
    try:
        if generic:
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        explained = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
    finally:
        await tx.rollback()
    return (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]


@pytest.fixture
async def history(db_url: str):
    """A company whose WhatsApp channel has HISTORY messages with provider ids, and their jobs."""
    pool = await create_pool(db_url, 1, 2)
    repo = IngestRepository(pool)
    company = await repo.ensure_default_company("Plans")
    route = await repo.ensure_company_route(company)
    assert route is not None
    async with pool.acquire() as conn:
        lead = await conn.fetchval(
            "INSERT INTO leads (company_id, pipeline_id, stage_id, phone_e164)"
            " VALUES ($1, $2, $3, '+15550100000') RETURNING id",
            company,
            route.pipeline_id,
            route.new_stage_id,
        )
        await conn.execute(
            """
            WITH m AS (
                INSERT INTO messages (company_id, lead_id, direction, channel, body, status,
                                      provider_message_id)
                SELECT $1, $2, CASE WHEN g % 2 = 0 THEN 'inbound' ELSE 'outbound' END,
                       'whatsapp_cloud', 'old ' || g, 'received', 'wamid.old' || g
                FROM generate_series(1, $3) g RETURNING id
            )
            INSERT INTO jobs (id, task_name, task_params, priority, idempotency_key, status)
            SELECT gen_random_uuid(), 'ai.engage', '{}', 100, 'ai.engage:' || id, 'completed'
            FROM m
            """,
            company,
            lead,
            HISTORY,
        )
        await conn.execute("ANALYZE messages; ANALYZE jobs")
    yield pool, route
    await pool.close()


async def test_filing_reads_only_the_batch_it_files(history):
    """A batch of new messages (two without a provider id, three with) and one that repeats a
    filed provider id: every node over messages or jobs returns at most the batch's rows."""
    pool, route = history
    rows = [
        InboundRow(address=f"+1555020000{i}", text=f"new {i}", provider_message_id=pid)
        for i, pid in enumerate([None, None, "wamid.new1", "wamid.new2", "wamid.new3"])
    ]
    rows.append(InboundRow(address="+15550100000", text="again", provider_message_id="wamid.old7"))
    _, args = file_args(route, rows, "whatsapp_cloud", "ai.engage")
    async with pool.acquire() as conn:
        plan = await explain(conn, FILE_SQL["phone"], *args)
    read = scans(plan, {"messages", "jobs"})
    assert read, "the plan reads messages and jobs"
    assert all(n <= len(rows) for _, _, n in read), read


async def test_filing_still_finds_a_repeated_provider_id(history):
    """The lookup the plan now makes per row still answers a repeat with the first filing."""
    pool, route = history
    async with pool.acquire() as conn:
        first = await conn.fetchrow(
            "SELECT m.id, m.lead_id, j.id AS job_id FROM messages m"
            " JOIN jobs j ON j.idempotency_key = 'ai.engage:' || m.id"
            " WHERE m.provider_message_id = 'wamid.old8'"
        )
        async with conn.transaction():
            [filed] = await IngestRepository.file_inbound(
                conn,
                route,
                identity="phone",
                channel="whatsapp_cloud",
                rows=[
                    InboundRow(address="+15550100000", text="dup", provider_message_id="wamid.old8")
                ],
                task="ai.engage",
            )
    assert (filed.message_id, filed.lead_id, filed.job_id, filed.created) == (
        first["id"],
        first["lead_id"],
        first["job_id"],
        False,
    )


async def rows_read(
    conn, sql: str, *args, tables: tuple[str, ...] = ("messages", "jobs")
) -> dict[str, int]:
    """Rows of `tables` that one run of `sql` read (index fetches and sequential reads), from
    the transaction's own statistics; the statement's writes are rolled back. The plan is the
    generic one, which a prepared statement settles on after its first runs: it knows no
    parameter's value (an array's length among them)."""
    query = (
        "SELECT relname, seq_tup_read + coalesce(idx_tup_fetch, 0) AS n"
        " FROM pg_stat_xact_user_tables WHERE relname = ANY($1::text[])"
    )
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        before = {r["relname"]: r["n"] for r in await conn.fetch(query, list(tables))}
        savepoint = conn.transaction()
        await savepoint.start()
        await conn.fetch(sql, *args)
        after = {r["relname"]: r["n"] for r in await conn.fetch(query, list(tables))}
        await savepoint.rollback()
    return {k: after[k] - before.get(k, 0) for k in after}


async def test_claiming_sends_reads_only_the_claimed_rows_behind_a_backlog(history):
    """A claim of 5 sends and the renewal of their leases, with HISTORY queued sends waiting
    that the statistics do not know of: each reads a few rows per send, not the backlog (the
    claim read all of it through the status index before)."""
    pool, _ = history
    async with pool.acquire() as conn:
        # The backlog built up after the statistics were taken (as it does): they still say
        # that hardly any send is queued.
        await conn.execute(
            "UPDATE messages SET direction = 'outbound', status = 'queued', attempts = 0"
        )
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM messages ORDER BY id LIMIT 5")]
        claim = await rows_read(conn, SendLedger._CLAIM, ids, [6] * 5, 30.0, ["queued"])
        renew = await rows_read(conn, SendLedger._RENEW, ids, [0] * 5, 30.0, ["queued"])
    assert 0 < claim["messages"] <= 3 * len(ids), claim
    assert 0 < renew["messages"] <= 3 * len(ids), renew


async def test_claiming_jobs_reads_only_the_claimed_rows_behind_a_backlog(history):
    """The same for jobs: 5 claimed (and completed) out of HISTORY queued that the statistics
    do not know of."""
    pool, _ = history
    async with pool.acquire() as conn:
        await conn.execute("UPDATE jobs SET status = 'queued'")
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM jobs ORDER BY id LIMIT 5")]
        claim = await rows_read(conn, JobLedger._CLAIM, ids, [6] * 5, 30.0, "w", ["queued"])
        await conn.execute("UPDATE jobs SET status = 'processing', attempts = 1")
        done = await rows_read(conn, JobLedger._COMPLETE, ids, [1] * 5, [None] * 5)
    assert 0 < claim["jobs"] <= 3 * len(ids), claim
    assert 0 < done["jobs"] <= 3 * len(ids), done


async def test_loading_a_reply_reads_no_knowledge_base_chunks(history):
    """ai.engage's one read asks whether the lead's company has a knowledge base: it reads the
    kept counts, not the chunks. It once tested the chunks themselves, which the planner ran as
    a scan of every company's chunks: one company's 100,000 chunks cost every other company's
    reply 300 ms of the database's CPU (by hand, the pipeline fell from 230 to 72 msg/s)."""
    pool, route = history
    async with pool.acquire() as conn:
        other = await conn.fetchval(
            "INSERT INTO companies (name) VALUES ('Catalogue') RETURNING id"
        )
        document = await conn.fetchval(
            "INSERT INTO ai_kb_documents (company_id, title, format, content, content_sha256)"
            " VALUES ($1, 'Catalogue', 'text', 'catalogue', 'catalogue') RETURNING id",
            other,
        )
        await conn.execute(
            "INSERT INTO ai_kb_docs (company_id, doc_id, title, content, chunk_index)"
            " SELECT $1, $2, 'Item ' || g, 'solar panel details for item ' || g, g"
            " FROM generate_series(1, $3) g",
            other,
            document,
            HISTORY,
        )
        await conn.execute("ANALYZE ai_kb_docs")
        lead, message = await conn.fetchrow(
            "SELECT lead_id, id FROM messages WHERE company_id = $1 ORDER BY created_at DESC"
            " LIMIT 1",
            route.company_id,
        )
        args = (lead, message, ["dlq"], "reply:none", 20, 0.0)
        read = await rows_read(conn, _LOAD_REPLY, *args, tables=("ai_kb_docs",))
        row = await conn.fetchrow(_LOAD_REPLY, *args)
        assert row["has_kb"] is False
        other_lead = await conn.fetchval(
            "INSERT INTO leads (company_id, phone_e164) VALUES ($1, '+15550100001') RETURNING id",
            other,
        )
        other_message = await conn.fetchval(
            "INSERT INTO messages (company_id, lead_id, direction, channel, body, status)"
            " VALUES ($1, $2, 'inbound', 'log', 'hello', 'received') RETURNING id",
            other,
            other_lead,
        )
        row = await conn.fetchrow(
            _LOAD_REPLY, other_lead, other_message, ["dlq"], "reply:other", 20, 0.0
        )
        assert row["has_kb"] is True
    assert read == {"ai_kb_docs": 0}, read


async def test_releasing_leases_reads_only_the_released_sends(db_url: str):
    """The release of the leases of sends whose runs ended without an outcome reads those
    sends, whatever the table's size: joined to the ids as a table, with the generic plan's
    guess of 100 ids, it was a sequential scan of every message on a table of a few hundred
    rows (and the costliest statement of the end-to-end row)."""
    pool = await create_pool(db_url, 1, 2)
    try:
        repo = IngestRepository(pool)
        company = await repo.ensure_default_company("Leases")
        async with pool.acquire() as conn:
            lead = await conn.fetchval(
                "INSERT INTO leads (company_id, phone_e164) VALUES ($1, '+15550100003')"
                " RETURNING id",
                company,
            )
            await conn.execute(
                "INSERT INTO messages (company_id, lead_id, direction, channel, body, status,"
                " attempts, lease_until)"
                " SELECT $1, $2, 'outbound', 'log', 'send ' || g, 'sending', 1,"
                " now() + interval '30 s' FROM generate_series(1, 300) g",
                company,
                lead,
            )
            await conn.execute("ANALYZE messages")
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM messages LIMIT 5")]
            read = await rows_read(conn, SendLedger._RELEASE, ids, [1] * 5)
            await conn.execute(SendLedger._RELEASE, ids, [1, 1, 1, 1, 2])
            held = await conn.fetch(
                "SELECT id FROM messages WHERE lease_until IS NOT NULL AND id = ANY($1)", ids
            )
    finally:
        await pool.close()
    assert 0 < read["messages"] <= 3 * len(ids), read
    # A run of another attempt keeps its lease.
    assert [r["id"] for r in held] == [ids[4]]


async def test_counting_a_leads_recent_replies_reads_only_that_leads_messages(history):
    """The reply breaker's count in ai.engage's read (the lead's automated replies in the
    window) reads the lead's messages, not every outbound message: with the statistics taken
    before a backlog of sends built up, the planner combined the lead's index with the partial
    index over all outbound messages, and every reply read every send of every company (by
    hand, ~3,000 index entries a reply during a 3,000-message drain)."""
    pool, route = history
    async with pool.acquire() as conn:
        lead = await conn.fetchval(
            "INSERT INTO leads (company_id, phone_e164) VALUES ($1, '+15550100002') RETURNING id",
            route.company_id,
        )
        message = await conn.fetchval(
            "INSERT INTO messages (company_id, lead_id, direction, channel, body, status)"
            " VALUES ($1, $2, 'inbound', 'log', 'hello', 'received') RETURNING id",
            route.company_id,
            lead,
        )
        await conn.execute(
            "INSERT INTO messages (company_id, lead_id, direction, channel, body, status, meta)"
            " VALUES ($1, $2, 'outbound', 'log', 'earlier answer', 'sent',"
            ' \'{"purpose": "reply"}\')',
            route.company_id,
            lead,
        )
        # Other leads' queued replies, sent after the statistics were taken.
        await conn.execute(
            "INSERT INTO messages (company_id, lead_id, direction, channel, body, status, meta)"
            " SELECT $1, $2, 'outbound', 'log', 'queued answer ' || g, 'queued',"
            ' \'{"purpose": "reply"}\' FROM generate_series(1, $3) g',
            route.company_id,
            (await conn.fetchval("SELECT lead_id FROM messages LIMIT 1")),
            HISTORY,
        )
        args = (lead, message, ["dlq"], "reply:none", 20, 3600.0)
        plan = await explain(conn, _LOAD_REPLY, *args)
        row = await conn.fetchrow(_LOAD_REPLY, *args)
    assert row["recent_replies"] == 1
    # What each bitmap read from an index of messages before the table was visited.
    read = [
        (n["Index Name"], returned(n))
        for n in nodes(plan)
        if n["Node Type"] == "Bitmap Index Scan" and n["Index Name"].startswith("messages_")
    ]
    assert all(n <= 5 for _, n in read), read
    assert all(n <= 5 for _, _, n in scans(plan, {"messages"})), scans(plan, {"messages"})


async def test_a_sends_policy_read_looks_the_lead_up_by_its_key(history):
    """dispatch's one policy read per send finds the lead by its primary key whatever the
    statistics say: with the lead's id and company tested side by side, the generic plan took
    leads_company_activity (the company first, the id last) and read every lead of the company
    for each send (by hand, ~300 rows a message in the end-to-end row)."""
    pool, route = history
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE leads")  # one lead: what the statistics know
        await conn.execute(
            "INSERT INTO leads (company_id, pipeline_id, stage_id, phone_e164)"
            " SELECT $1, $2, $3, '+1444' || lpad(g::text, 7, '0') FROM generate_series(1, $4) g",
            route.company_id,
            route.pipeline_id,
            route.new_stage_id,
            HISTORY,
        )
        lead = await conn.fetchval("SELECT id FROM leads ORDER BY created_at DESC LIMIT 1")
        args = (route.company_id, lead, ["log"], "+14440000001", ["all"], "log", None, True)
        plan = await explain(conn, _SEND_STATE, *args, generic=True)
        row = await conn.fetchrow(_SEND_STATE, *args)
        other = await conn.fetchrow(_SEND_STATE, uuid.uuid4(), *args[1:])
    leads = [
        (n["Index Name"], returned(n))
        for n in nodes(plan)
        if n.get("Relation Name") == "leads" and "Index Name" in n
    ]
    assert leads == [("leads_pkey", 1)], leads
    assert row is not None and row["company_timezone"]
    assert other is None  # another company's lead is not found
