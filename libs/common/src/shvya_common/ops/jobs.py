"""`shvya stats`, `shvya jobs list|show` and `shvya dlq list|show|replay`: jobs and sends as the
database records them (a send's record is its outbound message row), what JetStream holds for
one of them, and replaying dead letters through the job bus.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import asyncpg
from nats.js.errors import NotFoundError as JsNotFound

from shvya_common.bus.jobs import JobBus, ReplayKind, queue_stats
from shvya_common.contracts.subjects import Topology
from shvya_common.ops.base import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    NotFound,
    Row,
    Usage,
    database,
    emit,
    jetstream,
    table,
)
from shvya_common.settings import CommonSettings

SEND_TASK = "dispatch.send"
LIST_COLUMNS = ["id", "kind", "task", "status", "priority", "attempts", "updated_at", "last_error"]

# One shape for both ledgers: jobs, and sends (outbound messages, task dispatch.send).
_LEDGER_ROWS = """
SELECT * FROM (
    SELECT id, 'job' AS kind, task_name AS task, status, priority, attempts, replays, company_id,
           lead_id, created_at, updated_at, last_error
      FROM jobs
     WHERE $4::text IS NULL OR $4 = 'jobs'
    UNION ALL
    SELECT id, 'send', 'dispatch.send', status, priority, attempts, replays, company_id, lead_id,
           created_at, updated_at, last_error
      FROM messages
     WHERE direction = 'outbound' AND ($4::text IS NULL OR $4 = 'sends')
) r
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR task = $2)
  AND ($3::uuid IS NULL OR company_id = $3)
ORDER BY updated_at DESC, id
LIMIT $5
"""

_JOB = """
SELECT id, 'job' AS kind, task_name AS task, status, priority, attempts, max_attempts, replays,
       generation, idempotency_key, company_id, lead_id, created_at, updated_at, started_at,
       completed_at, run_after, published_at, lease_until, claimed_by, last_error, task_params
       AS params, result, traceparent
  FROM jobs WHERE id = $1
"""

_SEND = """
SELECT id, 'send' AS kind, 'dispatch.send' AS task, status, priority, attempts, replays,
       generation, send_key, channel, company_id, lead_id, job_id AS parent_job_id, created_at,
       updated_at, sent_at, published_at, lease_until, provider_message_id, last_error,
       send_params AS params, traceparent
  FROM messages WHERE id = $1 AND direction = 'outbound'
"""

_TIMERS = """
SELECT id, kind, status, due_at, reason, fired_at, last_error FROM timers
 WHERE target_id = $1 OR (kind = 'enqueue' AND idempotency_key = $2)
 ORDER BY created_at
"""

_TASK_COUNTS = """
SELECT task_name AS task, status, count(*) AS n FROM jobs GROUP BY 1, 2
UNION ALL
SELECT 'dispatch.send', status, count(*) FROM messages WHERE direction = 'outbound' GROUP BY 2
ORDER BY 1, 2
"""


def _kind(value: str) -> str | None:
    return None if value == "all" else value


async def _rows(
    pool: asyncpg.Pool,
    *,
    status: str | None,
    task: str | None,
    company: uuid.UUID | None,
    kind: str | None,
    limit: int,
) -> list[Row]:
    if task is not None and kind is None:
        kind = "sends" if task == SEND_TASK else "jobs"
    records = await pool.fetch(_LEDGER_ROWS, status, task, company, kind, limit)
    return [dict(r) for r in records]


async def stats(args: argparse.Namespace, settings: CommonSettings) -> int:
    async with database(settings) as pool:
        counts = await queue_stats(pool)
        by_task = [dict(r) for r in await pool.fetch(_TASK_COUNTS)]
    value: dict[str, Any] = dict(counts.__dict__)
    value["tasks"] = by_task
    jobs = {k: v for k, v in value.items() if k not in ("sends", "tasks")}
    text = "\n".join(
        [
            "jobs:  " + "  ".join(f"{k}={v}" for k, v in jobs.items()),
            "sends: " + ("  ".join(f"{k}={v}" for k, v in sorted(counts.sends.items())) or "none"),
            "",
            table(by_task, ["task", "status", "n"]),
        ]
    )
    emit(args, value, text)
    return EXIT_OK


async def jobs_list(args: argparse.Namespace, settings: CommonSettings) -> int:
    async with database(settings) as pool:
        rows = await _rows(
            pool,
            status=args.status,
            task=args.task,
            company=args.company,
            kind=_kind(args.kind),
            limit=args.limit,
        )
    emit(args, rows, table(rows, LIST_COLUMNS) if rows else "no jobs or sends match")
    return EXIT_OK


async def _one(pool: asyncpg.Pool, row_id: uuid.UUID) -> Row:
    record = await pool.fetchrow(_JOB, row_id) or await pool.fetchrow(_SEND, row_id)
    if record is None:
        raise NotFound(f"no job or outbound send has the id {row_id}")
    row = dict(record)
    key = row.get("idempotency_key") or ""
    row["timers"] = [dict(t) for t in await pool.fetch(_TIMERS, row_id, key)]
    return row


async def _message(js: Any, topology: Topology, row: Row) -> Row | None:
    """The row's message in the jobs stream (the last on its own subject), if it has one."""
    subject = topology.job_subject(row["task"], row["priority"] or 0, row["id"])
    try:
        raw = await js.get_last_msg(topology.jobs_stream, subject)
    except JsNotFound:
        return {"subject": subject, "in_stream": False}
    return {
        "subject": subject,
        "in_stream": True,
        "sequence": raw.seq,
        "headers": dict(raw.headers or {}),
        "size": len(raw.data or b""),
    }


def _describe(row: Row) -> str:
    skip = {"timers", "message", "params", "result"}
    width = max(len(k) for k in row)
    lines = [
        f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in row.items() if k not in skip
    ]
    lines.append(f"{'params'.ljust(width)}  {row.get('params')}")
    if row.get("result") is not None:
        lines.append(f"{'result'.ljust(width)}  {row['result']}")
    message = row.get("message")
    if message is not None:
        where = (
            f"in {message['subject']} (sequence {message['sequence']}, {message['headers']})"
            if message["in_stream"]
            else f"none on {message['subject']} (acked, or not published yet)"
        )
        lines.append(f"{'message'.ljust(width)}  {where}")
    timers = row.get("timers") or []
    lines.append(f"{'timers'.ljust(width)}  {len(timers) or 'none'}")
    if timers:
        lines.append(table(timers, ["id", "kind", "status", "due_at", "reason"]))
    return "\n".join(lines)


async def jobs_show(args: argparse.Namespace, settings: CommonSettings) -> int:
    async with database(settings) as pool:
        row = await _one(pool, args.id)
    async with jetstream(settings) as (_, js):
        row["message"] = await _message(js, Topology(settings.nats_prefix), row)
    emit(args, row, _describe(row))
    return EXIT_OK


async def dlq_list(args: argparse.Namespace, settings: CommonSettings) -> int:
    async with database(settings) as pool:
        rows = await _rows(
            pool,
            status="dlq",
            task=args.task,
            company=None,
            kind=_kind(args.kind),
            limit=args.limit,
        )
    columns = ["id", "kind", "task", "attempts", "replays", "updated_at", "last_error"]
    emit(args, rows, table(rows, columns) if rows else "no dead letters")
    return EXIT_OK


async def dlq_show(args: argparse.Namespace, settings: CommonSettings) -> int:
    async with database(settings) as pool:
        row = await _one(pool, args.id)
    if row["status"] != "dlq":
        raise NotFound(f"{row['kind']} {args.id} is not dead-lettered (status {row['status']})")
    emit(args, row, _describe(row))
    return EXIT_OK


async def dlq_replay(args: argparse.Namespace, settings: CommonSettings) -> int:
    ids: list[uuid.UUID] = list(args.ids or [])
    if not (ids or args.task or args.all):
        raise Usage("name the dead letters to replay: their ids, --task TASK, or --all")
    kind: ReplayKind = args.kind
    async with database(settings) as pool, jetstream(settings) as (nc, js):
        bus = JobBus(
            pool,
            nc,
            js,
            Topology(settings.nats_prefix),
            service="cli",
            max_attempts=settings.max_attempts,
        )
        bus.start()
        try:
            done = await bus.replay(
                len(ids) if ids else args.max,
                kind=kind,
                ids=ids or None,
                task=args.task,
                dry_run=args.dry_run,
            )
        finally:
            await bus.close()
    missing = [i for i in ids if i not in set(done.ids)]
    value = {
        "replayed": len(done.ids),
        "ids": done.ids,
        "jobs": done.jobs,
        "sends": done.sends,
        "dry_run": done.dry_run,
        "not_dead_letters": missing,
    }
    verb = "would replay" if done.dry_run else "replayed"
    lines = [f"{verb} {len(done.ids)} dead letter(s): {done.jobs} job(s), {done.sends} send(s)"]
    lines += [f"  {i}" for i in done.ids]
    if missing:
        lines.append(
            "not dead letters (unknown ids, or not in status dlq): " + ", ".join(map(str, missing))
        )
    emit(args, value, "\n".join(lines))
    return EXIT_NOT_FOUND if missing else EXIT_OK
