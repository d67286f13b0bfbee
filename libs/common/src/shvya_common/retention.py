"""Keeping the hot tables small: the queue counters folded, finished jobs and timers deleted after
an age, and events moved to a monthly archive.

- **Counters** (`compact_counters`): status changes add delta rows (migration 0016's triggers);
  this folds them into `queue_counts` so `GET /queue/stats` reads a few dozen rows. One pass
  takes the deltas it folds with SKIP LOCKED, so replicas never fold a row twice.
- **Jobs**: `completed` and `orphaned` jobs untouched for `jobs_days` are deleted. Dead letters,
  and anything that may still run, are kept whatever their age (replay needs them).
- **Timers**: fired, cancelled and failed timers older than `timers_days` are deleted.
- **Events**: events older than `events_hot_days` move to `events_archive`, partitioned by
  month (`events_archive_yYYYYmMM`, made as needed), unless the event feed still has them or a
  webhook delivery names them; whole archive months older than `events_archive_months` are
  dropped. `events_all` reads both. 0 for any age keeps those rows forever.

Every delete goes in batches of `batch` rows, one short transaction each, so retention never
holds long locks on a table that the hot path writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Serialises archive-partition DDL between scheduler replicas.
_ARCHIVE_LOCK = 0x5348_5659_42

_FOLD = """
WITH taken AS (
    SELECT id FROM queue_count_deltas ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM queue_count_deltas d USING taken WHERE d.id = taken.id
    RETURNING d.ledger, d.status, d.n
), summed AS (
    SELECT ledger, status, sum(n) AS n FROM moved GROUP BY ledger, status
)
INSERT INTO queue_counts AS c (ledger, status, n)
SELECT ledger, status, n FROM summed ORDER BY ledger, status
ON CONFLICT (ledger, status) DO UPDATE SET n = c.n + EXCLUDED.n
RETURNING 1
"""

_DELETE_JOBS = """
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE status = ANY($3::text[])
      AND updated_at < now() - make_interval(days => $1::int)
    ORDER BY status, updated_at LIMIT $2)
"""

_DELETE_TIMERS = """
DELETE FROM timers WHERE id IN (
    SELECT id FROM timers WHERE status <> 'pending'
      AND coalesce(fired_at, created_at) < now() - make_interval(days => $1::int)
    ORDER BY coalesce(fired_at, created_at) LIMIT $2)
"""

_OLDEST_HOT_EVENTS = """
SELECT min(created_at) AS first, max(created_at) AS last FROM (
    SELECT created_at FROM events
    WHERE created_at < now() - make_interval(days => $1::int)
    ORDER BY created_at LIMIT $2) b
"""

_ARCHIVE_EVENTS = """
WITH picked AS (
    SELECT e.id FROM events e
    WHERE e.created_at < now() - make_interval(days => $1::int)
      AND NOT EXISTS (SELECT 1 FROM event_feed f WHERE f.event_id = e.id)
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w WHERE w.event_id = e.id)
    ORDER BY e.created_at LIMIT $2
    FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM events e USING picked WHERE e.id = picked.id
    RETURNING e.id, e.company_id, e.lead_id, e.type, e.payload, e.created_at
)
INSERT INTO events_archive (id, company_id, lead_id, type, payload, created_at)
SELECT id, company_id, lead_id, type, payload, created_at FROM moved
"""


@dataclass(frozen=True)
class RetentionConfig:
    jobs_days: int = 7
    timers_days: int = 7
    events_hot_days: int = 30
    events_archive_months: int = 0
    batch: int = 5000
    # A pass stops after this many batches of one kind, to give the others a turn.
    max_batches: int = 20


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def compact_counters(pool: asyncpg.Pool, batch: int = 50_000) -> int:
    """Fold pending counter deltas into the totals; returns how many statuses changed."""
    rows = await pool.fetch(_FOLD, batch)
    return len(rows)


async def delete_finished_jobs(pool: asyncpg.Pool, config: RetentionConfig) -> int:
    if config.jobs_days <= 0:
        return 0
    done = 0
    for _ in range(config.max_batches):
        n = _count(
            await pool.execute(
                _DELETE_JOBS, config.jobs_days, config.batch, ["completed", "orphaned"]
            )
        )
        done += n
        if n < config.batch:
            break
    return done


async def delete_finished_timers(pool: asyncpg.Pool, config: RetentionConfig) -> int:
    if config.timers_days <= 0:
        return 0
    done = 0
    for _ in range(config.max_batches):
        n = _count(await pool.execute(_DELETE_TIMERS, config.timers_days, config.batch))
        done += n
        if n < config.batch:
            break
    return done


def _month(day: date) -> date:
    return day.replace(day=1)


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def archive_partition(month: date) -> str:
    return f"events_archive_y{month.year:04d}m{month.month:02d}"


async def _ensure_partitions(conn: asyncpg.Connection, first: datetime, last: datetime) -> None:
    """Archive partitions for every month from `first` to `last` (UTC months)."""
    month = _month(first.astimezone(UTC).date())
    end = _month(last.astimezone(UTC).date())
    while month <= end:
        following = _next_month(month)
        # Names and bounds come from dates we computed, never from input.
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {archive_partition(month)} PARTITION OF events_archive"
            f" FOR VALUES FROM ('{month.isoformat()} 00:00+00')"
            f" TO ('{following.isoformat()} 00:00+00')"
        )
        month = following


async def archive_events(pool: asyncpg.Pool, config: RetentionConfig) -> int:
    """Move events past the hot period into the monthly archive."""
    if config.events_hot_days <= 0:
        return 0
    done = 0
    for _ in range(config.max_batches):
        async with pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _ARCHIVE_LOCK):
                return done  # another replica is archiving
            span = await conn.fetchrow(_OLDEST_HOT_EVENTS, config.events_hot_days, config.batch)
            if span is None or span["first"] is None:
                return done
            await _ensure_partitions(conn, span["first"], span["last"])
            n = _count(await conn.execute(_ARCHIVE_EVENTS, config.events_hot_days, config.batch))
        done += n
        if n < config.batch:
            break
    return done


async def drop_archived_months(pool: asyncpg.Pool, config: RetentionConfig) -> list[str]:
    """Drop archive months entirely older than `events_archive_months`."""
    if config.events_archive_months <= 0:
        return []
    today = datetime.now(UTC).date()
    keep_from = _month(today)
    for _ in range(config.events_archive_months):
        keep_from = _month(keep_from - timedelta(days=1))
    dropped = []
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _ARCHIVE_LOCK):
            return []
        names = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'events_archive'::regclass ORDER BY c.relname"
        )
        for row in names:
            name = row["relname"]
            try:
                month = date(int(name[-7:-3]), int(name[-2:]), 1)
            except ValueError:
                continue
            if _next_month(month) <= keep_from and name == archive_partition(month):
                await conn.execute(f"DROP TABLE {name}")
                dropped.append(name)
    return dropped


async def retention_pass(pool: asyncpg.Pool, config: RetentionConfig) -> dict[str, int]:
    """One pass of every retention rule; returns how many rows each removed or moved."""
    out = {
        "jobs_deleted": await delete_finished_jobs(pool, config),
        "timers_deleted": await delete_finished_timers(pool, config),
        "events_archived": await archive_events(pool, config),
        "archive_months_dropped": len(await drop_archived_months(pool, config)),
    }
    if any(out.values()):
        log.info("retention_pass", **out)
    return out
