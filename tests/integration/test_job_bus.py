"""The job bus against real JetStream and PostgreSQL: retries, dead letters, replay, priority."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import pytest

from shvya_common.bus import Worker
from shvya_common.bus.worker import JobContext
from shvya_common.errors import PermanentError, RetryableError
from tests.support import eventually

pytestmark = pytest.mark.integration

SCHEDULE = [0.2, 0.4, 0.6, 0.8, 1.0]


def make_worker(plat, handlers, concurrency=4) -> Worker:
    return Worker(
        service="test",
        bus=plat.bus,
        nc=plat.nc,
        handlers=handlers,
        retry_schedule=SCHEDULE,
        concurrency=concurrency,
        ack_wait=5.0,
        poll_seconds=0.05,
    )


async def job_row(plat, job_id):
    return await plat.pool.fetchrow(
        "SELECT status, attempts, last_error, priority FROM jobs WHERE id = $1", job_id
    )


async def test_failures_retry_on_the_schedule_in_order_then_dead_letter(plat):
    """A job that always fails runs 6 times, waiting at least each scheduled delay in turn,
    then lands in the DLQ stream and has status dlq with its last error."""
    seen: list[tuple[int, float]] = []

    async def always_fails(params, job: JobContext):
        seen.append((job.attempt, time.monotonic()))
        raise RetryableError(f"provider down (attempt {job.attempt})")

    worker = make_worker(plat, {"webhook.reminder": always_fails})
    await worker.start()
    try:
        job = await plat.bus.enqueue_job("webhook.reminder", {"n": 1})
        row = await eventually(lambda: job_row(plat, job.id), lambda r: r["status"] == "dlq")
    finally:
        await worker.stop()
    assert [attempt for attempt, _ in seen] == [1, 2, 3, 4, 5, 6]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(seen)]
    for gap, delay in zip(gaps, SCHEDULE, strict=True):
        assert gap >= delay * 0.9, (gaps, SCHEDULE)
    assert row["attempts"] == 6
    assert row["last_error"] == "RetryableError: provider down (attempt 6)"
    info = await plat.js.stream_info(plat.topology.dlq_stream)
    assert info.state.messages == 1


async def test_failed_status_is_visible_between_retries(plat):
    """While a job waits for its next retry, the jobs table says failed with the error."""
    gate = asyncio.Event()

    async def fails_once(params, job: JobContext):
        if job.attempt == 1:
            raise RetryableError("first try fails")
        await gate.wait()

    worker = Worker(
        service="test",
        bus=plat.bus,
        nc=plat.nc,
        handlers={"webhook.reminder": fails_once},
        retry_schedule=[2.0],
        ack_wait=5.0,
        poll_seconds=0.05,
    )
    await worker.start()
    try:
        job = await plat.bus.enqueue_job("webhook.reminder", {})
        row = await eventually(lambda: job_row(plat, job.id), lambda r: r["status"] == "failed")
        assert row["last_error"] == "RetryableError: first try fails"
        stats = await plat.bus.queue_stats()
        assert stats.failed == 1
        gate.set()
        await eventually(lambda: job_row(plat, job.id), lambda r: r["status"] == "completed")
    finally:
        await worker.stop()


async def test_permanent_error_dead_letters_at_once(plat):
    """A PermanentError skips the remaining retries."""
    calls = 0

    async def rejects(params, job):
        nonlocal calls
        calls += 1
        raise PermanentError("recipient does not exist")

    worker = make_worker(plat, {"webhook.reminder": rejects})
    await worker.start()
    try:
        job = await plat.bus.enqueue_job("webhook.reminder", {})
        row = await eventually(lambda: job_row(plat, job.id), lambda r: r["status"] == "dlq")
    finally:
        await worker.stop()
    assert calls == 1
    assert row["last_error"] == "permanent: recipient does not exist"


async def test_replay_runs_dead_letters_once_with_original_priority_and_params(plat):
    """Replay puts DLQ jobs back with attempts reset and their priority and params; replaying
    the same jobs twice (even concurrently) runs each of them once."""
    healthy = False
    runs: list[tuple[uuid.UUID, dict, int, int]] = []

    async def flaky(params, job: JobContext):
        if not healthy:
            raise PermanentError("downstream rejected")
        runs.append((job.job_id, params, job.priority, job.attempt))

    worker = make_worker(plat, {"webhook.reminder": flaky})
    await worker.start()
    try:
        jobs = [
            await plat.bus.enqueue_job("webhook.reminder", {"n": i}, priority=55) for i in range(3)
        ]
        for job in jobs:
            await eventually(lambda j=job: job_row(plat, j.id), lambda r: r["status"] == "dlq")
        healthy = True
        first, second = await asyncio.gather(plat.bus.replay_dlq(10), plat.bus.replay_dlq(10))
        assert sorted(first + second) == sorted(j.id for j in jobs)
        assert await plat.bus.replay_dlq(10) == []
        for job in jobs:
            await eventually(
                lambda j=job: job_row(plat, j.id), lambda r: r["status"] == "completed"
            )
        await asyncio.sleep(0.5)
    finally:
        await worker.stop()
    assert sorted(r[0] for r in runs) == sorted(j.id for j in jobs)
    assert sorted(r[1]["n"] for r in runs) == [0, 1, 2]
    assert {r[2] for r in runs} == {55}
    assert {r[3] for r in runs} == {1}


async def test_higher_priority_starts_first_under_a_backlog(plat):
    """With a backlog queued lowest-priority first, a worker starts every job of a higher
    priority before any job of a lower one."""
    order: list[str] = []

    async def record(params, job: JobContext):
        order.append(job.task)

    lead, message = str(uuid.uuid4()), str(uuid.uuid4())
    backlog = (
        [("webhook.reminder", {})] * 8
        + [("sequence.step", {})] * 6
        + [("ai.summary", {"lead_id": lead})] * 4
        + [("ai.engage", {"lead_id": lead, "message_id": message})] * 3
    )
    for task, params in backlog:
        await plat.bus.enqueue_job(task, params)
    handlers = {t: record for t in ("webhook.reminder", "sequence.step", "ai.summary", "ai.engage")}
    worker = make_worker(plat, handlers, concurrency=1)
    await worker.start()
    try:
        await eventually(lambda: asyncio.sleep(0, len(order)), lambda n: n == len(backlog))
    finally:
        await worker.stop()
    assert (
        order
        == ["ai.engage"] * 3 + ["ai.summary"] * 4 + ["sequence.step"] * 6 + ["webhook.reminder"] * 8
    )


async def test_a_late_high_priority_job_overtakes_waiting_low_ones(plat):
    """A high-priority job enqueued while low-priority ones wait starts before all of them."""
    order: list[str] = []
    first_started = asyncio.Event()
    release = asyncio.Event()

    async def low(params, job):
        order.append("low")
        first_started.set()
        await release.wait()

    async def high(params, job):
        order.append("high")

    worker = make_worker(plat, {"webhook.reminder": low, "followup.bumpup": high}, concurrency=1)
    await worker.start()
    try:
        for _ in range(5):
            await plat.bus.enqueue_job("webhook.reminder", {})
        await first_started.wait()
        await plat.bus.enqueue_job("followup.bumpup", {"lead_id": str(uuid.uuid4())})
        release.set()
        await eventually(lambda: asyncio.sleep(0, len(order)), lambda n: n == 6)
    finally:
        await worker.stop()
    assert order == ["low", "high", "low", "low", "low", "low"]


async def test_idempotency_key_returns_the_existing_job(plat):
    """enqueue_job with a key that exists returns that job instead of a second one."""
    first = await plat.bus.enqueue_job("ai.summary", {"lead_id": str(uuid.uuid4())}, "k-1")
    again = await plat.bus.enqueue_job("ai.summary", {"lead_id": str(uuid.uuid4())}, "k-1")
    assert first.created and not again.created
    assert again.id == first.id
    assert await plat.pool.fetchval("SELECT count(*) FROM jobs") == 1


async def test_default_priority_comes_from_the_task_table(plat):
    """Jobs get the original's priorities unless the caller overrides them."""
    expected = {
        "ai.engage": 100,
        "followup.bumpup": 95,
        "ai.summary": 90,
        "sequence.step": 70,
        "email.sequence": 60,
        "webhook.reminder": 50,
    }
    lead, message = str(uuid.uuid4()), str(uuid.uuid4())
    for task in expected:
        await plat.bus.enqueue_job(task, {"lead_id": lead, "message_id": message})
    rows = await plat.pool.fetch("SELECT task_name, priority FROM jobs")
    assert {r["task_name"]: r["priority"] for r in rows} == expected


async def test_unknown_task_is_refused(plat):
    """Enqueueing a task nobody handles fails loudly instead of queueing forever."""
    with pytest.raises(ValueError, match="unknown task"):
        await plat.bus.enqueue_job("ai.engaeg", {})


async def test_scheduled_job_is_enqueued_by_a_timer_when_due(plat):
    """A job with run_at in the future waits in a timer and is enqueued when the scheduler
    fires it, under its idempotency key."""
    from datetime import UTC, datetime, timedelta

    from shvya_scheduler.handlers import fire_due_timers

    due = datetime.now(UTC) + timedelta(seconds=0.3)
    parked = await plat.bus.enqueue_job("sequence.step", {"step": 1}, "seq:1", run_at=due)
    assert parked.status == "scheduled"
    assert await fire_due_timers(plat.bus, 10) == 0
    await asyncio.sleep(0.4)
    assert await fire_due_timers(plat.bus, 10) == 1
    row = await plat.pool.fetchrow("SELECT status, idempotency_key FROM jobs")
    assert dict(row) == {"status": "queued", "idempotency_key": "seq:1"}
    info = await plat.js.stream_info(plat.topology.jobs_stream)
    assert info.state.messages == 1


async def test_two_scheduler_replicas_fire_each_timer_once(plat):
    """Timers claimed with FOR UPDATE SKIP LOCKED are fired by exactly one of two replicas."""
    from datetime import UTC, datetime

    from shvya_scheduler.handlers import fire_due_timers

    now = datetime.now(UTC)
    for i in range(40):
        await plat.bus.pool.execute(
            "INSERT INTO timers (kind, due_at, task_name, task_params, priority, idempotency_key)"
            " VALUES ('enqueue', $1, 'sequence.step', $2, 70, $3)",
            now,
            {"i": i},
            f"t:{i}",
        )
    fired = await asyncio.gather(*(fire_due_timers(plat.bus, 7) for _ in range(8)))
    while sum(fired) < 40:
        more = await asyncio.gather(fire_due_timers(plat.bus, 7), fire_due_timers(plat.bus, 7))
        assert sum(more) > 0
        fired += more
    assert sum(fired) == 40
    assert await plat.pool.fetchval("SELECT count(*) FROM jobs") == 40
    info = await plat.js.stream_info(plat.topology.jobs_stream)
    assert info.state.messages == 40
