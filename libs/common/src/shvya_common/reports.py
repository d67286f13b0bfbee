"""The reports: each one SQL query over a company's CRM, its result kept in `report_caches`.

- `funnel`: leads per stage of each pipeline, in stage order, with the share that reached each
  stage (a lead at a stage has passed those before it) and the conversion from the one before.
- `response_times`: inbound → our first reply, per conversation turn (an inbound message whose
  previous message on the lead was ours, or the first one). p50, p90 and mean in seconds,
  overall and per channel, and how many turns are still unanswered.
- `volumes`: messages per day (on the company's calendar) and channel, in and out; outbound
  counts only sends that left (sent or logged).
- `ai_vs_human`: replies and follow-ups that left, written by the AI (`meta.ai`, by responder)
  or by a person, per channel.

Windowed reports cover the last `days` days (30 by default) and are cached under
`<name>:<days>d`; the funnel is the current state, under `funnel`. The scheduler's
`report.refresh` fills the cache on a schedule, and the API computes a missing one on demand.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shvya_common.contracts.jobs import REPORTS
from shvya_common.cron import zone

DEFAULT_DAYS = 30
LEFT = ["sent", "logged"]

FUNNEL = """
SELECT p.id AS pipeline_id, p.name AS pipeline, p.is_default, s.id AS stage_id, s.name AS stage,
       s.position, coalesce(c.n, 0) AS leads,
       sum(coalesce(c.n, 0)) OVER (PARTITION BY p.id ORDER BY s.position DESC) AS reached
FROM pipelines p
JOIN stages s ON s.pipeline_id = p.id
LEFT JOIN (SELECT stage_id, count(*) AS n FROM leads WHERE company_id = $1 GROUP BY stage_id) c
       ON c.stage_id = s.id
WHERE p.company_id = $1
ORDER BY p.is_default DESC, p.created_at, p.id, s.position
"""

UNSTAGED = "SELECT count(*) FROM leads WHERE company_id = $1 AND stage_id IS NULL"

RESPONSE_TIMES = """
WITH turns AS (
    SELECT m.channel, m.created_at,
           (SELECT p.direction FROM messages p
            WHERE p.lead_id = m.lead_id AND (p.created_at, p.id) < (m.created_at, m.id)
              AND (p.direction = 'inbound' OR p.status = ANY($3::text[]))
            ORDER BY p.created_at DESC, p.id DESC LIMIT 1) AS previous,
           (SELECT r.sent_at FROM messages r
            WHERE r.lead_id = m.lead_id AND r.direction = 'outbound'
              AND r.created_at >= m.created_at AND r.status = ANY($3::text[])
              AND coalesce(r.meta->>'purpose', 'reply') = 'reply'
            ORDER BY r.created_at, r.id LIMIT 1) AS replied_at
    FROM messages m
    WHERE m.company_id = $1 AND m.direction = 'inbound' AND m.created_at >= $2
), timed AS (
    SELECT channel, extract(epoch FROM replied_at - created_at)::float8 AS seconds
    FROM turns WHERE previous IS DISTINCT FROM 'inbound'
)
SELECT channel, count(*) AS turns, count(seconds) AS answered,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY seconds) AS p90,
       avg(seconds) AS mean
FROM timed
GROUP BY GROUPING SETS ((channel), ())
ORDER BY channel NULLS FIRST
"""

VOLUMES = """
SELECT (m.created_at AT TIME ZONE $3)::date AS day, m.channel, m.direction, count(*) AS n
FROM messages m
WHERE m.company_id = $1 AND m.created_at >= $2
  AND (m.direction = 'inbound' OR m.status = ANY($4::text[]))
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""

AI_VS_HUMAN = """
SELECT m.channel,
       count(*) FILTER (WHERE m.meta ? 'ai') AS ai,
       count(*) FILTER (WHERE NOT m.meta ? 'ai') AS human,
       count(*) FILTER (WHERE m.meta->'ai'->>'responder' = 'openai') AS ai_model,
       count(*) FILTER (WHERE m.meta->'ai'->>'responder' = 'offline') AS ai_offline
FROM messages m
WHERE m.company_id = $1 AND m.direction = 'outbound' AND m.created_at >= $2
  AND m.status = ANY($3::text[])
  AND coalesce(m.meta->>'purpose', 'reply') IN ('reply', 'followup')
GROUP BY m.channel
ORDER BY m.channel
"""

_STORE = """
INSERT INTO report_caches (company_id, report_key, data, computed_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (company_id, report_key) DO UPDATE
SET data = EXCLUDED.data, computed_at = EXCLUDED.computed_at
"""


class UnknownReport(ValueError):
    """A report name that is not one of REPORTS."""


@dataclass(frozen=True)
class Report:
    name: str
    key: str
    company_id: uuid.UUID
    computed_at: datetime
    data: dict[str, Any]


def report_key(name: str, days: int = DEFAULT_DAYS) -> str:
    if name not in REPORTS:
        raise UnknownReport(f"unknown report {name!r}; reports: {', '.join(REPORTS)}")
    return "funnel" if name == "funnel" else f"{name}:{days}d"


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def funnel(conn: asyncpg.Connection, company_id: uuid.UUID) -> dict[str, Any]:
    rows = await conn.fetch(FUNNEL, company_id)
    pipelines: dict[uuid.UUID, dict[str, Any]] = {}
    for row in rows:
        pipe = pipelines.setdefault(
            row["pipeline_id"],
            {"pipeline": row["pipeline"], "default": row["is_default"], "stages": []},
        )
        stages = pipe["stages"]
        reached = int(row["reached"])
        entered = int(stages[0]["reached"]) if stages else reached
        previous = int(stages[-1]["reached"]) if stages else None
        stages.append(
            {
                "stage": row["stage"],
                "position": row["position"],
                "leads": row["leads"],
                "reached": reached,
                "reached_share": _ratio(reached, entered),
                "conversion_from_previous": _ratio(reached, previous) if previous else None,
            }
        )
    out = []
    for pipe in pipelines.values():
        stages = pipe["stages"]
        total = int(stages[0]["reached"]) if stages else 0
        last = int(stages[-1]["reached"]) if stages else 0
        out.append({**pipe, "leads": total, "overall_conversion": _ratio(last, total)})
    return {"pipelines": out, "leads_without_stage": await conn.fetchval(UNSTAGED, company_id)}


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


async def response_times(
    conn: asyncpg.Connection, company_id: uuid.UUID, since: datetime
) -> dict[str, Any]:
    rows = await conn.fetch(RESPONSE_TIMES, company_id, since, LEFT)
    overall: dict[str, Any] = {"turns": 0, "answered": 0, "unanswered": 0}
    channels = []
    for row in rows:
        entry = {
            "turns": row["turns"],
            "answered": row["answered"],
            "unanswered": row["turns"] - row["answered"],
            "p50_seconds": _seconds(row["p50"]),
            "p90_seconds": _seconds(row["p90"]),
            "mean_seconds": _seconds(row["mean"]),
        }
        if row["channel"] is None:
            overall = entry
        else:
            channels.append({"channel": row["channel"], **entry})
    return {**overall, "channels": channels}


async def volumes(
    conn: asyncpg.Connection, company_id: uuid.UUID, since: datetime, timezone: str
) -> dict[str, Any]:
    rows = await conn.fetch(VOLUMES, company_id, since, timezone, LEFT)
    days: dict[str, dict[str, Any]] = {}
    channels: dict[str, dict[str, int]] = {}
    for row in rows:
        day = days.setdefault(
            row["day"].isoformat(), {"day": row["day"].isoformat(), "inbound": 0, "outbound": 0}
        )
        day[row["direction"]] += row["n"]
        by_channel = day.setdefault("channels", {}).setdefault(
            row["channel"], {"inbound": 0, "outbound": 0}
        )
        by_channel[row["direction"]] += row["n"]
        total = channels.setdefault(row["channel"], {"inbound": 0, "outbound": 0})
        total[row["direction"]] += row["n"]
    return {
        "timezone": timezone,
        "inbound": sum(c["inbound"] for c in channels.values()),
        "outbound": sum(c["outbound"] for c in channels.values()),
        "channels": channels,
        "days": list(days.values()),
    }


async def ai_vs_human(
    conn: asyncpg.Connection, company_id: uuid.UUID, since: datetime
) -> dict[str, Any]:
    rows = await conn.fetch(AI_VS_HUMAN, company_id, since, LEFT)
    channels = [dict(r) for r in rows]
    ai = sum(r["ai"] for r in channels)
    human = sum(r["human"] for r in channels)
    return {
        "ai": ai,
        "human": human,
        "ai_share": _ratio(ai, ai + human),
        "ai_by_responder": {
            "openai": sum(r["ai_model"] for r in channels),
            "offline": sum(r["ai_offline"] for r in channels),
        },
        "channels": [
            {"channel": r["channel"], "ai": r["ai"], "human": r["human"]} for r in channels
        ],
    }


async def company_timezone(conn: asyncpg.Connection | asyncpg.Pool, company_id: uuid.UUID) -> str:
    """The company's zone as reports use it; None if the company does not exist."""
    name = await conn.fetchval("SELECT timezone FROM companies WHERE id = $1", company_id)
    if name is None:
        raise LookupError(f"company {company_id} does not exist")
    return zone(name).key


async def compute(
    conn: asyncpg.Connection, name: str, company_id: uuid.UUID, days: int = DEFAULT_DAYS
) -> Report:
    """Compute one report now and store it in report_caches (in the caller's transaction)."""
    key = report_key(name, days)
    now = datetime.now(UTC)
    since = now - timedelta(days=days)
    timezone = await company_timezone(conn, company_id)
    data: dict[str, Any]
    if name == "funnel":
        data = await funnel(conn, company_id)
    elif name == "response_times":
        data = await response_times(conn, company_id, since)
    elif name == "volumes":
        data = await volumes(conn, company_id, since, timezone)
    else:
        data = await ai_vs_human(conn, company_id, since)
    if name != "funnel":
        data = {"days": days, "since": since.isoformat(), **data}
    await conn.execute(_STORE, company_id, key, data, now)
    return Report(name, key, company_id, now, data)


async def cached(
    conn: asyncpg.Connection | asyncpg.Pool, company_id: uuid.UUID, name: str, days: int
) -> Report | None:
    key = report_key(name, days)
    row = await conn.fetchrow(
        "SELECT data, computed_at FROM report_caches WHERE company_id = $1 AND report_key = $2",
        company_id,
        key,
    )
    if row is None:
        return None
    return Report(name, key, company_id, row["computed_at"], row["data"])
