"""Operations for a company's admin: its queue by task and priority, how far the shared
workers are behind, its dead letters with a replay, and its paused channels.

    GET  /v1/operations/queue          jobs by task, priority and status; the oldest waiting
                                       job per task (the company's lag); outbound sends by
                                       status; the job consumers' backlog in JetStream
    GET  /v1/operations/dlq            the company's dead letters (jobs and sends), newest first
    POST /v1/operations/dlq/replay     {ids, dry_run}: put those back on the queue
    GET  /v1/operations/pauses         the company's paused channels, why and until when

Everything is the company's own rows, except `consumers`: the durable consumers are shared by
every company, so their backlog is a platform figure (counts only, no content). A replay goes
through the job bus's own replay (one writer of job states) with only ids of the company's
dead letters; another company's ids are skipped as if they did not exist.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shvya_common.contracts import PRIORITY_LEVELS, priority_level
from shvya_ingest import examples as ex
from shvya_ingest.auth import AdminCompany, PrincipalDep, audit
from shvya_ingest.v1.common import ERRORS, V1, IngestDep, limit_param

router = APIRouter(prefix="/v1/operations", dependencies=V1, tags=["operations"], responses=ERRORS)

CONSUMER_TIMEOUT = 2.0


class TaskRow(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "task": "ai.engage",
                "priority_level": 1,
                "counts": {"queued": 3, "processing": 1, "failed": 0, "dlq": 0, "completed": 812},
                "oldest_waiting_seconds": 2.4,
            }
        )
    )

    task: str
    priority_level: int = Field(description="The priority class (subject level) it runs at.")
    counts: dict[str, int] = Field(
        description="Jobs by status: queued, scheduled, processing,"
        " failed (retrying), dlq, completed."
    )
    oldest_waiting_seconds: float | None = Field(
        description="Age of the oldest queued job: how far behind this company's work is."
    )


class ConsumerRow(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "stream": "SHVYA_JOBS",
                "consumer": "engage-p1",
                "pending": 3,
                "ack_pending": 1,
                "waiting": 2,
            }
        )
    )

    stream: str
    consumer: str
    pending: int = Field(description="Messages not yet delivered to the consumer.")
    ack_pending: int = Field(description="Delivered, not yet acknowledged (running).")
    waiting: int = Field(description="Pull requests waiting for work.")


class QueueOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "tasks": [ex.example_of(TaskRow)],
                "sends": {"queued": 2, "sent": 340, "failed": 1},
                "consumers": [ex.example_of(ConsumerRow)],
                "computed_at": ex.UPDATED,
            }
        )
    )

    tasks: list[TaskRow]
    sends: dict[str, int] = Field(description="The company's outbound sends by status.")
    consumers: list[ConsumerRow] | None = Field(
        description="The shared job consumers' backlog (all companies); null when NATS does not"
        " answer."
    )
    computed_at: datetime


class DeadLetter(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": "0190f410-4f50-7162-8d7e-8f9a0b1c2d3e",
                "kind": "send",
                "task": "dispatch.send",
                "priority": 1,
                "lead_id": ex.LEAD_ID,
                "attempts": 5,
                "error": "whatsapp_cloud: 131026 message undeliverable",
                "detail": "whatsapp_cloud: Hi Ana, the quote for a 6 kW system",
                "dead_at": ex.UPDATED,
            }
        )
    )

    id: uuid.UUID
    kind: Literal["job", "send"]
    task: str
    priority: int | None
    lead_id: uuid.UUID | None
    attempts: int
    error: str | None
    detail: str | None = Field(description="A send's channel and the start of its text.")
    dead_at: datetime


class DeadLetterList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples({"items": [ex.example_of(DeadLetter)], "total": 1})
    )

    items: list[DeadLetter]
    total: int


class ReplayIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ids": ["6f1c1a5e-2f55-4c0c-9a57-9a1f4f0e7d2b"]}]}
    )

    ids: list[uuid.UUID] = Field(min_length=1, max_length=200, description="Dead letters' ids.")
    dry_run: bool = Field(False, description="Say what would be replayed; change nothing.")


class ReplayOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "replayed": 1,
                "ids": ["0190f410-4f50-7162-8d7e-8f9a0b1c2d3e"],
                "jobs": 0,
                "sends": 1,
                "skipped": [],
                "dry_run": False,
            }
        )
    )

    replayed: int
    ids: list[uuid.UUID]
    jobs: int
    sends: int
    skipped: list[uuid.UUID] = Field(description="Ids that are not dead letters of the company.")
    dry_run: bool


class PauseOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "channel": "whatsapp_cloud",
                "reason": "Meta rate limit: too many messages to this number",
                "error_code": 131056,
                "paused_at": ex.CREATED,
                "paused_until": ex.UPDATED,
            }
        )
    )

    channel: str
    reason: str
    error_code: int | None
    paused_at: datetime
    paused_until: datetime | None = Field(description="null: until an operator lifts it.")


async def _consumers(ingest: Any) -> list[ConsumerRow] | None:
    js = ingest.plat.js
    stream = ingest.plat.topology.jobs_stream
    try:
        infos = await asyncio.wait_for(js.consumers_info(stream), CONSUMER_TIMEOUT)
    except Exception:
        return None
    rows = [
        ConsumerRow(
            stream=stream,
            consumer=info.name or "",
            pending=int(info.num_pending or 0),
            ack_pending=int(info.num_ack_pending or 0),
            waiting=int(info.num_waiting or 0),
        )
        for info in infos
    ]
    return sorted(rows, key=lambda r: r.consumer)


@router.get("/queue", response_model=QueueOut)
async def queue(company_id: AdminCompany, ingest: IngestDep) -> QueueOut:
    pool = ingest.plat.pool
    rows = await pool.fetch(
        "SELECT task_name, priority, status, count(*) AS n,"
        " extract(epoch FROM now() - min(updated_at) FILTER (WHERE status = 'queued')) AS oldest"
        " FROM jobs WHERE company_id = $1 AND status <> 'orphaned'"
        " GROUP BY task_name, priority, status",
        company_id,
    )
    tasks: dict[tuple[str, int], TaskRow] = {}
    for row in rows:
        level = priority_level(row["priority"])
        item = tasks.setdefault(
            (row["task_name"], level),
            TaskRow(
                task=row["task_name"],
                priority_level=level,
                counts={},
                oldest_waiting_seconds=None,
            ),
        )
        item.counts[row["status"]] = item.counts.get(row["status"], 0) + row["n"]
        if row["oldest"] is not None:
            age = round(float(row["oldest"]), 1)
            item.oldest_waiting_seconds = max(item.oldest_waiting_seconds or 0.0, age)
    sends = await pool.fetch(
        "SELECT status, count(*) AS n FROM messages WHERE company_id = $1"
        " AND direction = 'outbound' GROUP BY status",
        company_id,
    )
    order = {level: i for i, level in enumerate(PRIORITY_LEVELS)}
    return QueueOut(
        tasks=sorted(tasks.values(), key=lambda t: (order.get(t.priority_level, 99), t.task)),
        sends={r["status"]: r["n"] for r in sends},
        consumers=await _consumers(ingest),
        computed_at=await pool.fetchval("SELECT now()"),
    )


_DEAD = """
SELECT * FROM (
    SELECT id, 'job' AS kind, task_name AS task, priority, lead_id, attempts, last_error AS error,
           NULL AS detail, updated_at AS dead_at
    FROM jobs WHERE company_id = $1 AND status = 'dlq'
      AND ($2::text IS NULL OR task_name = $2)
    UNION ALL
    SELECT id, 'send', 'dispatch.send', priority, lead_id, attempts, last_error,
           channel || ': ' || left(body, 80), updated_at
    FROM messages WHERE company_id = $1 AND direction = 'outbound' AND status = 'dlq'
      AND ($2::text IS NULL OR $2 = 'dispatch.send')
) d
"""


@router.get("/dlq", response_model=DeadLetterList)
async def dead_letters(
    request: Request,
    company_id: AdminCompany,
    ingest: IngestDep,
    task: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Only dead letters of this task, e.g. `ai.reply` (`dispatch.send` for"
            " sends).",
        ),
    ] = None,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=1000,
            description="How many, newest first: 1 to 1000 and at most MAX_PAGE_SIZE.",
        ),
    ] = 100,
) -> DeadLetterList:
    """The company's dead letters, newest first, each with its last error."""
    limit = limit_param(request, limit)
    pool = ingest.plat.pool
    rows = await pool.fetch(_DEAD + " ORDER BY dead_at DESC, id LIMIT $3", company_id, task, limit)
    total = await pool.fetchval(f"SELECT count(*) FROM ({_DEAD}) t", company_id, task)
    return DeadLetterList(items=[DeadLetter(**dict(r)) for r in rows], total=total)


@router.post("/dlq/replay", response_model=ReplayOut)
async def replay(
    body: ReplayIn, company_id: AdminCompany, ingest: IngestDep, caller: PrincipalDep
) -> ReplayOut:
    """Put these dead letters back on the queue (attempts reset), through the job bus."""
    wanted = list(dict.fromkeys(body.ids))
    owned = await ingest.plat.pool.fetch(
        "SELECT id FROM jobs WHERE id = ANY($2::uuid[]) AND company_id = $1 AND status = 'dlq'"
        " UNION SELECT id FROM messages WHERE id = ANY($2::uuid[]) AND company_id = $1"
        " AND direction = 'outbound' AND status = 'dlq'",
        company_id,
        wanted,
    )
    ids = [r["id"] for r in owned]
    skipped = [i for i in wanted if i not in set(ids)]
    if not ids:
        return ReplayOut(replayed=0, ids=[], jobs=0, sends=0, skipped=skipped, dry_run=body.dry_run)
    done = await ingest.plat.bus.replay(len(ids), kind="all", ids=ids, dry_run=body.dry_run)
    if not done.dry_run and done.ids:
        await audit(
            ingest.plat.pool,
            caller,
            company_id,
            "dlq.replayed",
            {"ids": [str(i) for i in done.ids], "jobs": done.jobs, "sends": done.sends},
        )
    return ReplayOut(
        replayed=0 if done.dry_run else len(done.ids),
        ids=done.ids,
        jobs=done.jobs,
        sends=done.sends,
        skipped=skipped,
        dry_run=done.dry_run,
    )


@router.get("/pauses", response_model=list[PauseOut], responses=ex.listed(PauseOut))
async def pauses(company_id: AdminCompany, ingest: IngestDep) -> list[PauseOut]:
    """Channels whose sends are paused now (deferred, not dropped), with the reason."""
    rows = await ingest.plat.pool.fetch(
        "SELECT channel, reason, error_code, paused_at, paused_until FROM channel_pauses"
        " WHERE company_id = $1 AND resumed_at IS NULL"
        " AND (paused_until IS NULL OR paused_until > now()) ORDER BY paused_at",
        company_id,
    )
    return [PauseOut(**dict(r)) for r in rows]
