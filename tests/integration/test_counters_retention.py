"""Queue counters stay equal to the true counts through every move (retries, dead letters,
replay, sends, deletes, TRUNCATE), whether folded or not; retention deletes and archives only
what it should."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shvya_common.bus import Worker
from shvya_common.bus.worker import JobContext
from shvya_common.contracts import SendParams
from shvya_common.errors import PermanentError, RetryableError
from shvya_common.retention import (
    RetentionConfig,
    archive_events,
    archive_partition,
    compact_counters,
    delete_finished_jobs,
    delete_finished_timers,
    drop_archived_months,
)
from tests.support import eventually

pytestmark = pytest.mark.integration


async def true_counts(plat) -> tuple[dict[str, int], dict[str, int]]:
    jobs = {
        r["status"]: r["n"]
        for r in await plat.pool.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    }
    sends = {
        r["status"]: r["n"]
        for r in await plat.pool.fetch(
            "SELECT status, count(*) AS n FROM messages WHERE direction = 'outbound'"
            " GROUP BY status"
        )
    }
    return jobs, sends


async def assert_counters_true(plat) -> None:
    """The stats equal a count of the tables, before and after folding the deltas."""
    jobs, sends = await true_counts(plat)
    for _ in range(2):
        stats = await plat.bus.queue_stats()
        assert stats.queued == jobs.get("queued", 0) + jobs.get("scheduled", 0)
        assert stats.processing == jobs.get("processing", 0)
        assert stats.completed == jobs.get("completed", 0)
        assert stats.failed == jobs.get("failed", 0)
        assert stats.dlq == jobs.get("dlq", 0)
        assert stats.orphaned == jobs.get("orphaned", 0)
        assert stats.total == sum(n for s, n in jobs.items() if s != "orphaned")
        assert stats.sends == sends
        await compact_counters(plat.pool)


async def seed_lead(plat) -> tuple[uuid.UUID, uuid.UUID]:
    company = await plat.pool.fetchval(
        "INSERT INTO companies (name) VALUES ('Counters') RETURNING id"
    )
    lead = await plat.pool.fetchval(
        "INSERT INTO leads (company_id, phone_e164) VALUES ($1, $2) RETURNING id",
        company,
        f"+1555{uuid.uuid4().int % 10_000_000:07d}",
    )
    return company, lead


async def test_counters_follow_retries_dead_letters_and_replay(plat):
    """Jobs that complete, retry then complete, and dead-letter then get replayed: the counters
    equal the tables' counts at every step."""
    outcomes: dict[str, list[str]] = {}

    async def handler(params, job: JobContext):
        plan = outcomes.setdefault(params["name"], list(params["plan"]))
        step = plan.pop(0) if plan else "ok"
        if step == "retry":
            raise RetryableError("again")
        if step == "dead":
            raise PermanentError("never")
        return {"done": True}

    worker = Worker(
        service="test",
        bus=plat.bus,
        nc=plat.nc,
        handlers={"test.work": handler},
        retry_schedule=[0.1, 0.1],
        concurrency=4,
        ack_wait=5.0,
        poll_seconds=0.05,
    )
    await assert_counters_true(plat)
    await worker.start()
    try:
        plans = {"a": [], "b": ["retry", "retry"], "c": ["dead"], "d": ["dead"]}
        ids = {}
        for name, plan in plans.items():
            ids[name] = (await plat.bus.enqueue_job("test.work", {"name": name, "plan": plan})).id

        async def statuses():
            rows = await plat.pool.fetch(
                "SELECT id, status FROM jobs WHERE id = ANY($1::uuid[])", list(ids.values())
            )
            return {r["id"]: r["status"] for r in rows}

        await eventually(
            statuses, lambda s: sorted(s.values()) == ["completed", "completed", "dlq", "dlq"]
        )
        await assert_counters_true(plat)
        replayed = await plat.bus.replay(10, kind="jobs", ids=[ids["c"]])
        assert replayed.ids == [ids["c"]]
        await eventually(statuses, lambda s: s[ids["c"]] == "completed")
        await assert_counters_true(plat)
    finally:
        await worker.stop()


async def test_counters_follow_sends_deletes_and_truncate(plat):
    """Outbound sends counted by status (inbound messages not at all); deleting a lead and
    TRUNCATE keep the counters true."""
    company, lead = await seed_lead(plat)
    await plat.pool.execute(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body)"
        " VALUES ($1, $2, 'inbound', 'log', 'hi')",
        company,
        lead,
    )
    async with plat.bus.unit() as unit:
        message_id, _ = await unit.request_send(
            SendParams(
                company_id=company,
                lead_id=lead,
                channel="log",
                to="+15550000000",
                text="hello",
                send_key=f"test:{uuid.uuid4()}",
                purpose="reply",
            ),
            priority=100,
        )
    await assert_counters_true(plat)
    assert (await plat.bus.queue_stats()).sends == {"queued": 1}
    await plat.pool.execute("UPDATE messages SET status = 'sent' WHERE id = $1", message_id)
    await plat.pool.execute("UPDATE messages SET published_at = now() WHERE id = $1", message_id)
    await assert_counters_true(plat)
    await plat.pool.execute("DELETE FROM leads WHERE id = $1", lead)  # cascades to messages
    await assert_counters_true(plat)
    await plat.bus.enqueue_job("test.work", {})
    await plat.pool.execute("TRUNCATE jobs CASCADE")
    await assert_counters_true(plat)
    assert (await plat.bus.queue_stats()).total == 0


async def test_retention_deletes_only_old_finished_jobs_and_timers(plat):
    """Completed and orphaned jobs past the age go; dead letters, failed, queued and recent
    completed jobs stay; only finished timers past the age go."""
    old = datetime.now(UTC) - timedelta(days=10)
    rows = {
        "old_completed": ("completed", old),
        "old_orphaned": ("orphaned", old),
        "old_dlq": ("dlq", old),
        "old_failed": ("failed", old),
        "old_queued": ("queued", old),
        "new_completed": ("completed", datetime.now(UTC)),
    }
    ids = {}
    for name, (status, at) in rows.items():
        ids[name] = uuid.uuid4()
        await plat.pool.execute(
            "INSERT INTO jobs (id, task_name, priority, status, updated_at)"
            " VALUES ($1, 'test.work', 50, $2, $3)",
            ids[name],
            status,
            at,
        )
    timers = {}
    for name, status in (("old_fired", "fired"), ("old_pending", "pending")):
        timers[name] = await plat.pool.fetchval(
            "INSERT INTO timers (kind, due_at, task_name, status, created_at, fired_at)"
            " VALUES ('enqueue', $1, 'test.work', $2::text, $1,"
            " CASE WHEN $2::text = 'fired' THEN $1::timestamptz END) RETURNING id",
            old,
            status,
        )
    config = RetentionConfig(jobs_days=7, timers_days=7, batch=100)
    assert await delete_finished_jobs(plat.pool, config) == 2
    left = {r["id"] for r in await plat.pool.fetch("SELECT id FROM jobs")}
    assert left == {ids[n] for n in ("old_dlq", "old_failed", "old_queued", "new_completed")}
    assert await delete_finished_timers(plat.pool, config) == 1
    left_timers = {r["id"] for r in await plat.pool.fetch("SELECT id FROM timers")}
    assert left_timers == {timers["old_pending"]}
    await assert_counters_true(plat)
    # Age 0 keeps everything.
    assert await delete_finished_jobs(plat.pool, RetentionConfig(jobs_days=0)) == 0


async def test_old_events_move_to_the_monthly_archive_and_stay_readable(plat):
    """Events past the hot period move to their month's partition (not those the feed still
    holds, nor those a webhook delivery names); events_all still reads every one, a lead's
    erasure erases its archived events, and old archive months can be dropped."""
    company, lead = await seed_lead(plat)
    long_ago = datetime(2025, 1, 15, tzinfo=UTC)
    made = []
    for i, at in enumerate((long_ago, long_ago + timedelta(days=31), datetime.now(UTC))):
        made.append(
            await plat.pool.fetchval(
                "INSERT INTO events (company_id, lead_id, type, payload, created_at)"
                " VALUES ($1, $2, 'note.added', jsonb_build_object('i', $3::int), $4) RETURNING id",
                company,
                lead,
                i,
                at,
            )
        )
    # The feed has consumed the first two; the third (recent) is still in the feed.
    await plat.pool.execute("DELETE FROM event_feed WHERE event_id = ANY($1::uuid[])", made[:2])
    moved = await archive_events(plat.pool, RetentionConfig(events_hot_days=30, batch=10))
    assert moved == 2
    hot = {r["id"] for r in await plat.pool.fetch("SELECT id FROM events WHERE lead_id = $1", lead)}
    assert hot == {made[2]}
    partitions = {
        r["relname"]
        for r in await plat.pool.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'events_archive'::regclass"
        )
    }
    assert partitions == {
        archive_partition(long_ago.date()),
        archive_partition((long_ago + timedelta(days=31)).date()),
    }
    every = await plat.pool.fetch(
        "SELECT id FROM events_all WHERE lead_id = $1 ORDER BY created_at", lead
    )
    assert [r["id"] for r in every] == made
    dropped = await drop_archived_months(plat.pool, RetentionConfig(events_archive_months=6))
    assert sorted(dropped) == sorted(partitions)
    assert await plat.pool.fetchval("SELECT count(*) FROM events_archive") == 0

    # Erasure reaches the archive too.
    await plat.pool.execute(
        "INSERT INTO events (company_id, lead_id, type, created_at)"
        " VALUES ($1, $2, 'note.added', $3)",
        company,
        lead,
        long_ago,
    )
    await plat.pool.execute("DELETE FROM event_feed")
    assert await archive_events(plat.pool, RetentionConfig(events_hot_days=30)) == 1
    await plat.pool.execute("DELETE FROM leads WHERE id = $1", lead)
    assert await plat.pool.fetchval("SELECT count(*) FROM events_archive") == 0
