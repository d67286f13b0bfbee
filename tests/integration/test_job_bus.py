"""The job bus against real JetStream and PostgreSQL: retries, dead letters, replay, priority,
the outbox (commit first, publish after), the relay, the reconciler, fencing and outages."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from shvya_common.bus import Worker
from shvya_common.bus.ledgers import (
    JOB_COLUMNS,
    JobLedger,
    SendLedger,
    mark_published,
    outgoing_from_row,
)
from shvya_common.bus.relay import Relay, RelayConfig
from shvya_common.bus.worker import JobContext
from shvya_common.contracts import JobEnvelope, SendParams
from shvya_common.errors import PermanentError, RetryableError
from tests.support import eventually

pytestmark = pytest.mark.integration

SCHEDULE = [0.2, 0.4, 0.6, 0.8, 1.0]


def make_worker(plat, handlers, concurrency=4, **kw) -> Worker:
    return Worker(
        service="test",
        bus=plat.bus,
        nc=plat.nc,
        handlers=handlers,
        retry_schedule=kw.pop("retry_schedule", SCHEDULE),
        concurrency=concurrency,
        ack_wait=kw.pop("ack_wait", 5.0),
        poll_seconds=0.05,
        **kw,
    )


async def job_row(plat, job_id):
    return await plat.pool.fetchrow(
        "SELECT status, attempts, last_error, priority, generation, published_at"
        " FROM jobs WHERE id = $1",
        job_id,
    )


async def stream_messages(plat) -> int:
    return (await plat.js.stream_info(plat.topology.jobs_stream)).state.messages


def envelope(job_id, task="test.work", priority=50, generation=0) -> JobEnvelope:
    return JobEnvelope(
        job_id=job_id,
        task=task,
        priority=priority,
        params={},
        generation=generation,
        enqueued_at=datetime.now(UTC),
    )


# --- retries, dead letters, replay ---------------------------------------------------------


async def test_failures_retry_on_the_schedule_in_order_then_dead_letter(plat):
    """A job that always fails runs 6 times, waiting at least each scheduled delay in turn,
    then lands in the DLQ stream and has status dlq with its last error."""
    seen: list[tuple[int, float]] = []

    async def always_fails(params, job: JobContext):
        seen.append((job.attempt, time.monotonic()))
        raise RetryableError(f"provider down (attempt {job.attempt})")

    worker = make_worker(plat, {"test.work": always_fails})
    await worker.start()
    try:
        job = await plat.bus.enqueue_job("test.work", {"n": 1})
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


async def test_a_task_retry_policy_overrides_the_schedule_and_names_errors_not_retried(plat):
    """A registration's RetryPolicy sets its own attempts, and its non-retryable errors
    dead-letter at once."""
    from shvya_common.bus import Registration, RetryPolicy
    from shvya_common.contracts import task_spec

    calls: list[str] = []

    async def flaky(params, job: JobContext):
        calls.append(params["kind"])
        if params["kind"] == "lookup":
            raise LookupError("no such record")
        raise RuntimeError("try again")

    policy = RetryPolicy(schedule=(0.1, 0.1), non_retryable=(LookupError,))
    registration = Registration(task_spec("test.work"), flaky, None, policy)
    worker = make_worker(plat, {"test.work": registration})
    await worker.start()
    try:
        retried = await plat.bus.enqueue_job("test.work", {"kind": "runtime"})
        refused = await plat.bus.enqueue_job("test.work", {"kind": "lookup"})
        for job in (retried, refused):
            await eventually(lambda j=job: job_row(plat, j.id), lambda r: r["status"] == "dlq")
    finally:
        await worker.stop()
    assert calls.count("runtime") == 3 and calls.count("lookup") == 1
    assert (await job_row(plat, refused.id))[
        "last_error"
    ] == "not retryable: LookupError: no such record"


async def test_failed_status_is_visible_between_retries(plat):
    """While a job waits for its next retry, the jobs table says failed with the error."""
    gate = asyncio.Event()

    async def fails_once(params, job: JobContext):
        if job.attempt == 1:
            raise RetryableError("first try fails")
        await gate.wait()

    worker = make_worker(plat, {"test.work": fails_once}, retry_schedule=[2.0])
    await worker.start()
    try:
        job = await plat.bus.enqueue_job("test.work", {})
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

    worker = make_worker(plat, {"test.work": rejects})
    await worker.start()
    try:
        job = await plat.bus.enqueue_job("test.work", {})
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

    worker = make_worker(plat, {"test.work": flaky})
    await worker.start()
    try:
        jobs = [await plat.bus.enqueue_job("test.work", {"n": i}, priority=55) for i in range(3)]
        for job in jobs:
            await eventually(lambda j=job: job_row(plat, j.id), lambda r: r["status"] == "dlq")
        healthy = True
        dry = await plat.bus.replay(10, dry_run=True)
        assert sorted(dry.ids) == sorted(j.id for j in jobs) and dry.dry_run
        first, second = await asyncio.gather(plat.bus.replay_dlq(10), plat.bus.replay_dlq(10))
        assert sorted(first + second) == sorted(j.id for j in jobs)
        assert await plat.bus.replay_dlq(10) == []
        for job in jobs:
            await eventually(
                lambda j=job: job_row(plat, j.id), lambda r: r["status"] == "completed"
            )
    finally:
        await worker.stop()
    assert sorted(r[0] for r in runs) == sorted(j.id for j in jobs)
    assert sorted(r[1]["n"] for r in runs) == [0, 1, 2]
    assert {r[2] for r in runs} == {55}
    assert {r[3] for r in runs} == {1}
    assert {(await job_row(plat, j.id))["generation"] for j in jobs} == {1}


async def test_replay_covers_dead_lettered_sends_but_never_unknown_ones(plat, db_url):
    """A send in the DLQ is put back on the queue (and on JetStream) by replay; a send whose
    outcome is unknown is never replayed, since it may have reached the customer."""
    company = await plat.pool.fetchval("INSERT INTO companies (name) VALUES ('A') RETURNING id")
    lead = await plat.pool.fetchval(
        "INSERT INTO leads (company_id, phone_e164) VALUES ($1, '+15550001') RETURNING id",
        company,
    )
    ids = {}
    for status in ("dlq", "unknown"):
        params = SendParams(
            company_id=company,
            lead_id=lead,
            channel="log",
            to="+15550001",
            text=status,
            send_key=f"k:{status}",
        )
        async with plat.bus.unit() as unit:
            ids[status], _ = await unit.request_send(params, priority=100)
        await plat.pool.execute(
            "UPDATE messages SET status = $2 WHERE id = $1", ids[status], status
        )
    before = await stream_messages(plat)
    done = await plat.bus.replay(10, kind="sends")
    assert done.ids == [ids["dlq"]] and done.sends == 1 and done.jobs == 0
    rows = await plat.pool.fetch("SELECT id, status, generation FROM messages ORDER BY body")
    assert {r["id"]: (r["status"], r["generation"]) for r in rows} == {
        ids["dlq"]: ("queued", 1),
        ids["unknown"]: ("unknown", 0),
    }
    assert await stream_messages(plat) == before + 1


# --- priority and capacity -----------------------------------------------------------------


async def test_higher_priority_starts_first_under_a_backlog(plat):
    """With a backlog queued lowest-priority first, a worker starts every job of a higher
    priority before any job of a lower one."""
    order: list[str] = []

    async def record(params, job: JobContext):
        order.append(job.task)

    lead, message = str(uuid.uuid4()), str(uuid.uuid4())
    backlog = (
        [("test.work", {})] * 8
        + [("test.step", {})] * 6
        + [("ai.summary", {"lead_id": lead})] * 4
        + [("ai.engage", {"lead_id": lead, "message_id": message})] * 3
    )
    for task, params in backlog:
        await plat.bus.enqueue_job(task, params)
    handlers = {t: record for t in ("test.work", "test.step", "ai.summary", "ai.engage")}
    worker = make_worker(plat, handlers, concurrency=1)
    await worker.start()
    try:
        await eventually(lambda: asyncio.sleep(0, len(order)), lambda n: n == len(backlog))
    finally:
        await worker.stop()
    assert order == ["ai.engage"] * 3 + ["ai.summary"] * 4 + ["test.step"] * 6 + ["test.work"] * 8


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

    worker = make_worker(plat, {"test.work": low, "followup.bumpup": high}, concurrency=1)
    await worker.start()
    try:
        for _ in range(5):
            await plat.bus.enqueue_job("test.work", {})
        await first_started.wait()
        await plat.bus.enqueue_job("followup.bumpup", {"lead_id": str(uuid.uuid4())})
        release.set()
        await eventually(lambda: asyncio.sleep(0, len(order)), lambda n: n == 6)
    finally:
        await worker.stop()
    assert order == ["low", "high", "low", "low", "low", "low"]


async def _reply_behind_a_backlog(plat, backlog, held, **worker_kw) -> tuple[Worker, int, int]:
    """A worker whose slow summaries and P2 jobs (`backlog` of each) fill `held` slots, then a
    reply. Once the reply ran: the worker, how many low-priority jobs had started, and how many
    were still queued (the slow jobs are then released and the worker stopped)."""
    release = asyncio.Event()
    started: list[str] = []
    reply_ran = asyncio.Event()

    async def slow(params, job: JobContext):
        started.append(job.task)
        await release.wait()

    async def reply(params, job: JobContext):
        reply_ran.set()

    handlers = {"test.work": slow, "ai.summary": slow, "ai.engage": reply}
    worker = make_worker(plat, handlers, **worker_kw)
    await worker.start()
    try:
        for _ in range(backlog):
            await plat.bus.enqueue_job("test.work", {})
            await plat.bus.enqueue_job("ai.summary", {"lead_id": str(uuid.uuid4())})
        await eventually(lambda: asyncio.sleep(0, len(started)), lambda n: n == held)
        params = {"lead_id": str(uuid.uuid4()), "message_id": str(uuid.uuid4())}
        await plat.bus.enqueue_job("ai.engage", params)
        await asyncio.wait_for(reply_ran.wait(), 10)
        started_then = len(started)
        queued = await plat.pool.fetchval(
            "SELECT count(*) FROM jobs WHERE status = 'queued' AND task_name <> 'ai.engage'"
        )
    finally:
        release.set()
        await worker.stop()
    return worker, started_then, queued


async def test_reserved_slots_keep_room_for_replies_behind_a_p2_and_summary_burst(plat):
    """With every unreserved slot held by slow summaries and P2 jobs, a reply still starts at
    once in a reserved slot, and no more low-priority jobs are started meanwhile."""
    _, started, _ = await _reply_behind_a_backlog(plat, 6, 3, concurrency=4, reserved_p1=1)
    assert started == 3  # the reserved slot was never given to the backlog


async def test_low_priority_slots_cap_the_backlog_a_worker_holds(plat):
    """With WORKER_LOW_PRIORITY_SLOTS=2 of 8 slots, a backlog of summaries and P2 jobs never has
    more than 2 in hand, the free slots stay empty, and a reply starts at once beside them."""
    worker, started, queued = await _reply_behind_a_backlog(
        plat, 5, 2, concurrency=8, reserved_p1=1, low_priority_slots=2
    )
    assert worker.low_slots == 2
    assert started == 2 and queued == 8  # six free slots, and still only two taken
    # Unset, the low-priority jobs may use every slot that is not reserved.
    assert make_worker(plat, {}, concurrency=8, reserved_p1=1).low_slots == 7


async def test_idempotency_key_returns_the_existing_job(plat):
    """enqueue_job with a key that exists returns that job instead of a second one."""
    first = await plat.bus.enqueue_job("ai.summary", {"lead_id": str(uuid.uuid4())}, "k-1")
    again = await plat.bus.enqueue_job("ai.summary", {"lead_id": str(uuid.uuid4())}, "k-1")
    assert first.created and not again.created
    assert again.id == first.id
    assert await plat.pool.fetchval("SELECT count(*) FROM jobs") == 1


async def test_default_priority_comes_from_the_task_table(plat):
    """Jobs get the contract's priorities unless the caller overrides them."""
    expected = {"ai.engage": 100, "followup.bumpup": 95, "ai.summary": 90, "test.work": 50}
    lead, message = str(uuid.uuid4()), str(uuid.uuid4())
    for task in expected:
        await plat.bus.enqueue_job(task, {"lead_id": lead, "message_id": message})
    rows = await plat.pool.fetch("SELECT task_name, priority FROM jobs")
    assert {r["task_name"]: r["priority"] for r in rows} == expected


async def test_unknown_task_is_refused(plat):
    """Enqueueing a task nobody handles fails loudly instead of queueing forever."""
    with pytest.raises(ValueError, match="unknown task"):
        await plat.bus.enqueue_job("ai.engaeg", {})


# --- the outbox ----------------------------------------------------------------------------


async def test_a_rolled_back_unit_publishes_nothing_and_leaves_no_row(plat):
    """Enqueues in a transaction that rolls back never reach JetStream or the jobs table."""
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with plat.bus.unit() as unit:
            await unit.enqueue_job("test.work", {})
            raise RuntimeError("changed my mind")
    assert await plat.pool.fetchval("SELECT count(*) FROM jobs") == 0
    assert await stream_messages(plat) == 0


async def test_publish_happens_after_a_slow_commit_so_the_job_runs_once(plat):
    """A job whose COMMIT takes a second (a deferred trigger sleeps at commit) is only
    published after it, so the worker finds its row, runs it once and nothing is orphaned."""
    await plat.pool.execute(
        """
        CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON jobs
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
        """
    )
    runs: list[uuid.UUID] = []

    async def record(params, job: JobContext):
        runs.append(job.job_id)

    worker = make_worker(plat, {"test.work": record})
    await worker.start()
    try:
        job = await plat.bus.enqueue_job("test.work", {})
        await eventually(lambda: job_row(plat, job.id), lambda r: r["status"] == "completed")
    finally:
        await worker.stop()
    assert runs == [job.id]
    assert await plat.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'orphaned'") == 0


async def test_confirmed_publishes_are_recorded_in_batches(plat):
    """After a publish JetStream acknowledged, the row's published_at is set by the flusher."""
    job = await plat.bus.enqueue_job("test.work", {})
    row = await eventually(
        lambda: job_row(plat, job.id), lambda r: r["published_at"] is not None, timeout=10
    )
    assert row["status"] == "queued" and row["generation"] == 0


async def test_a_confirmation_skips_a_row_another_transaction_holds_instead_of_waiting(plat):
    """Confirmations never wait on a row lock (they deadlocked with claims, which lock in id
    order): the held row stays unconfirmed, the free one is confirmed, and nothing blocks."""
    ids = [uuid.uuid4(), uuid.uuid4()]
    await plat.pool.execute(
        "INSERT INTO jobs (id, task_name, task_params, priority, status)"
        " SELECT id, 'test.work', '{}', 50, 'queued' FROM unnest($1::uuid[]) AS id",
        ids,
    )
    rows = await plat.pool.fetch(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1)", ids)
    items = [outgoing_from_row("jobs", r) for r in sorted(rows, key=lambda r: ids.index(r["id"]))]
    async with plat.pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", ids[0])
        await asyncio.wait_for(mark_published(plat.pool, "jobs", items), timeout=10)
        confirmed = await plat.pool.fetch(
            "SELECT id FROM jobs WHERE published_at IS NOT NULL AND id = ANY($1)", ids
        )
    assert [r["id"] for r in confirmed] == [ids[1]]


async def test_the_relay_publishes_rows_whose_publish_was_never_confirmed(plat):
    """A committed row with no confirmed publish (the writer died after COMMIT) is published by
    the relay, and a second pass republishes nothing."""
    job_id = uuid.uuid4()
    await plat.pool.execute(
        "INSERT INTO jobs (id, task_name, task_params, priority, status, updated_at)"
        " VALUES ($1, 'test.work', '{}', 50, 'queued', now() - interval '1 minute')",
        job_id,
    )
    relay = Relay(plat.bus, RelayConfig(grace=1.0))
    assert await relay.relay_once() == 1
    assert (await job_row(plat, job_id))["published_at"] is not None
    assert await relay.relay_once() == 0
    raw = await plat.js.get_last_msg(
        plat.topology.jobs_stream, plat.topology.job_subject("test.work", 50, job_id)
    )
    assert raw.headers["Nats-Msg-Id"] == f"{job_id}:0"


async def test_the_reconciler_republishes_a_job_whose_message_was_lost(plat):
    """A queued job whose message vanished from JetStream (data loss) gets a new generation
    and is published again; one whose message is there is left alone."""
    lost = await plat.bus.enqueue_job("test.work", {"which": "lost"})
    kept = await plat.bus.enqueue_job("test.work", {"which": "kept"})
    await eventually(lambda: job_row(plat, lost.id), lambda r: r["published_at"] is not None)
    await eventually(lambda: job_row(plat, kept.id), lambda r: r["published_at"] is not None)
    subject = plat.topology.job_subject("test.work", 50, lost.id)
    await plat.js.purge_stream(plat.topology.jobs_stream, subject=subject)
    await plat.pool.execute("UPDATE jobs SET updated_at = now() - interval '10 minutes'")
    relay = Relay(plat.bus, RelayConfig(horizon=60.0))
    assert await relay.reconcile_once() == 1
    assert (await job_row(plat, lost.id))["generation"] == 1
    assert (await job_row(plat, kept.id))["generation"] == 0
    raw = await plat.js.get_last_msg(plat.topology.jobs_stream, subject)
    assert raw.headers["Nats-Msg-Id"] == f"{lost.id}:1"
    runs: list[str] = []

    async def record(params, job: JobContext):
        runs.append(params["which"])

    worker = make_worker(plat, {"test.work": record})
    await worker.start()
    try:
        await eventually(lambda: asyncio.sleep(0, sorted(runs)), lambda r: r == ["kept", "lost"])
    finally:
        await worker.stop()


async def test_a_lost_failed_job_whose_republish_did_not_go_out_is_republished_later(plat):
    """A job waiting out a retry ('failed') whose message JetStream lost is bumped; when that
    republish does not go out (NATS unreachable: the publisher reports nothing acknowledged),
    the row is left unconfirmed in a status the relay does not take. The next reconciler pass
    still finds it, republishes it, and the job runs."""
    job = await plat.bus.enqueue_job("test.work", {})
    await eventually(lambda: job_row(plat, job.id), lambda r: r["published_at"] is not None)
    subject = plat.topology.job_subject("test.work", 50, job.id)
    await plat.js.purge_stream(plat.topology.jobs_stream, subject=subject)
    await plat.pool.execute(
        "UPDATE jobs SET status = 'failed', attempts = 1, last_error = 'boom',"
        " updated_at = now() - interval '10 minutes' WHERE id = $1",
        job.id,
    )
    publisher = plat.bus.publisher
    real_publish = publisher.publish

    async def unreachable(items, **kwargs):
        return []  # what the publisher answers while NATS is disconnected

    relay = Relay(plat.bus, RelayConfig(horizon=60.0))
    publisher.publish = unreachable
    try:
        assert await relay.reconcile_once() == 1  # bumped, but nothing went out
    finally:
        publisher.publish = real_publish
    row = await job_row(plat, job.id)
    assert (row["status"], row["generation"], row["published_at"]) == ("failed", 1, None)
    assert await relay.relay_once() == 0  # not the relay's: it takes queued rows only
    await plat.pool.execute(
        "UPDATE jobs SET updated_at = now() - interval '10 minutes' WHERE id = $1", job.id
    )
    assert await relay.reconcile_once() == 1
    raw = await plat.js.get_last_msg(plat.topology.jobs_stream, subject)
    assert raw.headers["Nats-Msg-Id"] == f"{job.id}:2"
    runs: list[uuid.UUID] = []

    async def record(params, job_: JobContext):
        runs.append(job_.job_id)

    worker = make_worker(plat, {"test.work": record})
    await worker.start()
    try:
        await eventually(lambda: job_row(plat, job.id), lambda r: r["status"] == "completed")
    finally:
        await worker.stop()
    assert runs == [job.id]


async def test_two_reconcilers_republish_a_lost_row_once(plat):
    """Concurrent reconcilers agree: the generation bump is fenced, so one republish happens."""
    job = await plat.bus.enqueue_job("test.work", {})
    await eventually(lambda: job_row(plat, job.id), lambda r: r["published_at"] is not None)
    await plat.js.purge_stream(plat.topology.jobs_stream)
    await plat.pool.execute("UPDATE jobs SET updated_at = now() - interval '10 minutes'")
    config = RelayConfig(horizon=60.0)
    counts = await asyncio.gather(*(Relay(plat.bus, config).reconcile_once() for _ in range(4)))
    assert sum(counts) == 1
    assert (await job_row(plat, job.id))["generation"] == 1
    assert await stream_messages(plat) == 1


# --- fencing and leases --------------------------------------------------------------------


async def test_a_stale_run_cannot_overwrite_a_newer_run_or_a_terminal_state(plat):
    """Once a second claim overtakes an expired one, the first run's outcome writes do nothing;
    a completed job is never turned back into failed."""
    job = await plat.bus.enqueue_job("test.work", {})
    ledger = JobLedger(plat.pool)
    env = envelope(job.id)
    first = await ledger.claim(env, max_attempts=6, lease=0.2, worker="a")
    assert (first.action, first.attempt) == ("run", 1)
    assert (await ledger.claim(env, max_attempts=6, lease=5, worker="b")).action == "busy"
    await asyncio.sleep(0.3)
    second = await ledger.claim(env, max_attempts=6, lease=5, worker="b")
    assert (second.action, second.attempt) == ("run", 2)
    assert not await ledger.complete(env, 1, {"by": "stale"})
    assert await ledger.complete(env, 2, {"by": "fresh"})
    assert not await ledger.retry(env, 2, "late failure", datetime.now(UTC))
    assert not await ledger.dead(env, 2, "late failure")
    row = await plat.pool.fetchrow("SELECT status, result FROM jobs WHERE id = $1", job.id)
    assert row["status"] == "completed" and row["result"] == {"by": "fresh"}


class LapsesBeforeTheStateRead:
    """A pool whose ledger state read (the one after a failed claim) waits until the row's lease
    has lapsed: the claim saw a live lease, the read after it sees it gone, as happens when a
    redelivery arrives just as the dead worker's lease runs out."""

    def __init__(self, pool: asyncpg.Pool, table: str, row_id: uuid.UUID) -> None:
        self.pool, self.table, self.row_id = pool, table, row_id

    async def fetchval(self, sql: str, *args: object) -> object:
        return await self.pool.fetchval(sql, *args)

    async def _lapse_before_the_state_read(self, sql: str) -> None:
        if "lease_until - now()" in sql:
            await eventually(
                lambda: self.pool.fetchval(
                    f"SELECT lease_until <= now() FROM {self.table} WHERE id = $1", self.row_id
                ),
                timeout=10,
                interval=0.02,
            )

    async def fetchrow(self, sql: str, *args: object) -> object:
        await self._lapse_before_the_state_read(sql)
        return await self.pool.fetchrow(sql, *args)

    async def fetch(self, sql: str, *args: object) -> object:
        await self._lapse_before_the_state_read(sql)
        return await self.pool.fetch(sql, *args)


async def test_a_claim_racing_its_lease_running_out_waits_instead_of_dead_lettering(plat):
    """A redelivery whose claim finds the lease live but whose state read finds it lapsed has
    attempts left: it is told to come back (busy), never that the job or send is exhausted."""
    job = await plat.bus.enqueue_job("test.work", {})
    env = envelope(job.id)
    assert (
        await JobLedger(plat.pool).claim(env, max_attempts=6, lease=0.3, worker="a")
    ).attempt == 1
    racing = JobLedger(LapsesBeforeTheStateRead(plat.pool, "jobs", job.id))  # type: ignore[arg-type]
    claim = await racing.claim(env, max_attempts=6, lease=5, worker="b")
    assert claim.action == "busy" and claim.retry_in < 1
    again = await JobLedger(plat.pool).claim(env, max_attempts=6, lease=5, worker="b")
    assert (again.action, again.attempt) == ("run", 2)

    company = await plat.pool.fetchval("INSERT INTO companies (name) VALUES ('R') RETURNING id")
    lead = await plat.pool.fetchval(
        "INSERT INTO leads (company_id, phone_e164) VALUES ($1, '+15550009') RETURNING id",
        company,
    )
    params = SendParams(
        company_id=company, lead_id=lead, channel="log", to="+1", text="t", send_key="race"
    )
    async with plat.bus.unit() as unit:
        send_id = (await unit.request_send(params, priority=100))[0]
    send = envelope(send_id, task="dispatch.send", priority=100)
    assert (
        await SendLedger(plat.pool).claim(send, max_attempts=6, lease=0.3, worker="a")
    ).attempt == 1
    racing_send = SendLedger(LapsesBeforeTheStateRead(plat.pool, "messages", send_id))  # type: ignore[arg-type]
    assert (await racing_send.claim(send, max_attempts=6, lease=5, worker="b")).action == "busy"
    rerun = await SendLedger(plat.pool).claim(send, max_attempts=6, lease=5, worker="b")
    assert (rerun.action, rerun.attempt, rerun.prior_status) == ("run", 2, "queued")


async def test_a_sent_message_is_never_turned_into_unknown_by_a_stale_run(plat):
    """A send recorded sent stays sent when an overtaken run later reports it unknown, and a
    late confirmation turns an unknown send into sent."""
    company = await plat.pool.fetchval("INSERT INTO companies (name) VALUES ('A') RETURNING id")
    lead = await plat.pool.fetchval(
        "INSERT INTO leads (company_id, phone_e164) VALUES ($1, '+15550002') RETURNING id",
        company,
    )
    ledger = SendLedger(plat.pool)
    ids = []
    for n in range(2):
        params = SendParams(
            company_id=company, lead_id=lead, channel="log", to="+1", text="t", send_key=f"s{n}"
        )
        async with plat.bus.unit() as unit:
            ids.append((await unit.request_send(params, priority=100))[0])
    env = envelope(ids[0], task="dispatch.send", priority=100)
    claim = await ledger.claim(env, max_attempts=6, lease=30, worker="a")
    assert await ledger.mark_sending(ids[0], claim.attempt)
    assert await ledger.record_sent(
        ids[0], claim.attempt, status="sent", provider_message_id="p1", meta={}
    )
    assert not await ledger.record_unknown(ids[0], claim.attempt, "stale run gave up")
    env2 = envelope(ids[1], task="dispatch.send", priority=100)
    claim2 = await ledger.claim(env2, max_attempts=6, lease=30, worker="a")
    assert await ledger.mark_sending(ids[1], claim2.attempt)
    assert await ledger.record_unknown(ids[1], claim2.attempt, "no answer")
    assert await ledger.record_sent(
        ids[1], claim2.attempt, status="sent", provider_message_id="p2", meta={}
    )
    statuses = await plat.pool.fetch("SELECT id, status FROM messages ORDER BY send_key")
    assert [r["status"] for r in statuses] == ["sent", "sent"]


async def test_a_deferral_writes_message_deferred_once_per_reason(plat):
    """A send deferred twice with the same reason writes one `message.deferred`, a third
    deferral with another reason writes a second, and a stale run's deferral writes none."""
    company = await plat.pool.fetchval("INSERT INTO companies (name) VALUES ('D') RETURNING id")
    lead = await plat.pool.fetchval(
        "INSERT INTO leads (company_id, phone_e164) VALUES ($1, '+15550010') RETURNING id",
        company,
    )
    params = SendParams(
        company_id=company, lead_id=lead, channel="log", to="+1", text="t", send_key="later"
    )
    async with plat.bus.unit() as unit:
        send_id = (await unit.request_send(params, priority=100))[0]
    ledger = SendLedger(plat.pool)
    env = envelope(send_id, task="dispatch.send", priority=100)
    until = datetime.now(UTC) + timedelta(minutes=5)
    pacing = "pacing: at least 15 s between log sends per recipient"
    quiet = "quiet hours: log sends only 09:00-17:00 (UTC)"
    for n, reason in enumerate([pacing, pacing, quiet]):
        claim = await ledger.claim(env, max_attempts=6, lease=30, worker="a")
        assert claim.action == "run"
        assert await ledger.defer(env, claim.attempt, until + timedelta(seconds=n), reason)
        assert not await ledger.defer(env, claim.attempt, until, "a stale run's reason")
        async with plat.pool.acquire() as conn:  # what the resume timer does when it is due
            assert await ledger.requeue(conn, send_id) is not None
    events = await plat.pool.fetch(
        "SELECT lead_id, payload FROM events WHERE company_id = $1 AND type = 'message.deferred'"
        " ORDER BY created_at",
        company,
    )
    assert [(e["lead_id"], e["payload"]) for e in events] == [
        (
            lead,
            {
                "message_id": str(send_id),
                "channel": "log",
                "reason": pacing,
                "deferred_until": until.isoformat(),
            },
        ),
        (
            lead,
            {
                "message_id": str(send_id),
                "channel": "log",
                "reason": quiet,
                "deferred_until": (until + timedelta(seconds=2)).isoformat(),
            },
        ),
    ]
    row = await plat.pool.fetchrow("SELECT attempts, meta FROM messages WHERE id = $1", send_id)
    assert row["attempts"] == 0 and row["meta"]["deferred_reason"] == quiet


async def test_a_second_copy_while_the_first_run_is_alive_waits_instead_of_running(plat):
    """A duplicate message for a job whose run is still alive (as after a partition longer
    than ack_wait, or a reconciler's copy) is held back; the handler runs once."""
    release = asyncio.Event()
    running = 0
    peak = 0
    runs = 0

    async def slow(params, job: JobContext):
        nonlocal running, peak, runs
        running += 1
        runs += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    worker = make_worker(plat, {"test.work": slow}, concurrency=4)
    await worker.start()
    try:
        job = await plat.bus.enqueue_job("test.work", {})
        await eventually(lambda: asyncio.sleep(0, runs), lambda n: n == 1)
        copy = envelope(job.id, generation=7)
        await plat.js.publish(
            plat.topology.job_subject("test.work", 50, job.id),
            copy.model_dump_json().encode(),
            headers={"Nats-Msg-Id": f"{job.id}:7"},
        )
        await asyncio.sleep(1.0)  # the copy is delivered and held back meanwhile
        assert runs == 1
        release.set()
        await eventually(lambda: job_row(plat, job.id), lambda r: r["status"] == "completed")
        await eventually(lambda: stream_messages(plat), lambda n: n == 0, timeout=20)
    finally:
        release.set()
        await worker.stop()
    assert runs == 1 and peak == 1


# --- bad input and outages -----------------------------------------------------------------


async def test_a_malformed_envelope_is_dead_lettered_with_its_reason(plat):
    """Garbage on a job subject goes to the DLQ stream with the reason; the worker keeps going
    and runs the next real job."""
    runs = []

    async def record(params, job: JobContext):
        runs.append(job.job_id)

    worker = make_worker(plat, {"test.work": record})
    await worker.start()
    try:
        await plat.js.publish(
            plat.topology.job_subject("test.work", 50, "junk"), b'{"not": "an envelope"'
        )
        job = await plat.bus.enqueue_job("test.work", {})
        await eventually(lambda: job_row(plat, job.id), lambda r: r["status"] == "completed")
    finally:
        await worker.stop()
    raw = await plat.js.get_last_msg(plat.topology.dlq_stream, plat.topology.dlq_subject("invalid"))
    dead = json.loads(raw.data)
    assert dead["error"].startswith("invalid envelope") and dead["envelope"] is None
    assert runs == [job.id]


async def test_a_message_without_a_row_is_kept_as_an_orphan_and_never_replayed(plat):
    """A job message whose row never existed becomes an `orphaned` row and a DLQ entry; replay
    does not touch it."""
    ghost = uuid.uuid4()
    await plat.js.publish(
        plat.topology.job_subject("test.work", 50, ghost),
        envelope(ghost).model_dump_json().encode(),
        headers={"Nats-Msg-Id": f"{ghost}:0"},
    )

    async def never(params, job):
        raise AssertionError("an orphan must not run")

    worker = make_worker(plat, {"test.work": never})
    await worker.start()
    try:
        row = await eventually(
            lambda: job_row(plat, ghost), lambda r: r is not None and r["status"] == "orphaned"
        )
    finally:
        await worker.stop()
    assert "orphan" in row["last_error"]
    assert await plat.bus.replay_dlq(10) == []
    assert (await plat.bus.queue_stats()).orphaned == 1


async def test_a_database_outage_is_not_counted_as_an_attempt(plat, db_url, pg_admin_url):
    """Jobs delivered while PostgreSQL refuses connections are neither run nor counted; when it
    is back the worker resumes by itself and each job completes on its first attempt."""
    runs: list[int] = []

    async def record(params, job: JobContext):
        runs.append(job.attempt)

    name = db_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_admin_url)
    worker = make_worker(plat, {"test.work": record}, retry_schedule=[0.1])
    jobs = [await plat.bus.enqueue_job("test.work", {"n": n}) for n in range(5)]
    try:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await plat.pool.expire_connections()
        await worker.start()
        await asyncio.sleep(3.0)  # deliveries meet the outage meanwhile
        assert runs == []
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        for job in jobs:
            await eventually(
                lambda j=job: job_row(plat, j.id),
                lambda r: r["status"] == "completed",
                timeout=60,
            )
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
        await worker.stop()
    assert runs == [1] * 5
    assert {(await job_row(plat, j.id))["attempts"] for j in jobs} == {1}


# --- timers --------------------------------------------------------------------------------


async def test_scheduled_job_is_enqueued_by_a_timer_when_due(plat):
    """A job with run_at in the future waits in a timer and is enqueued when the scheduler
    fires it, under its idempotency key."""
    from shvya_scheduler.handlers import fire_due_timers

    due = datetime.now(UTC) + timedelta(seconds=0.3)
    parked = await plat.bus.enqueue_job("test.step", {"step": 1}, "seq:1", run_at=due)
    assert parked.status == "scheduled"
    assert await fire_due_timers(plat.bus, 10) == 0
    await asyncio.sleep(0.4)
    assert await fire_due_timers(plat.bus, 10) == 1
    row = await plat.pool.fetchrow("SELECT status, idempotency_key FROM jobs")
    assert dict(row) == {"status": "queued", "idempotency_key": "seq:1"}
    assert await stream_messages(plat) == 1


async def test_a_timer_that_cannot_fire_is_set_aside_and_the_rest_fire(plat):
    """A due timer naming an unknown task is marked failed with its error; the other timers of
    the same tick are enqueued, and the next tick does not retry the bad one."""
    from shvya_scheduler.handlers import fire_due_timers

    now = datetime.now(UTC)
    for key, task in (("good-1", "test.step"), ("bad", "no.such.task"), ("good-2", "test.step")):
        await plat.pool.execute(
            "INSERT INTO timers (kind, due_at, task_name, task_params, priority, idempotency_key)"
            " VALUES ('enqueue', $1, $2, '{}', 70, $3)",
            now,
            task,
            key,
        )
    assert await fire_due_timers(plat.bus, 10) == 3
    assert await fire_due_timers(plat.bus, 10) == 0
    rows = await plat.pool.fetch("SELECT idempotency_key, status, last_error FROM timers")
    state = {r["idempotency_key"]: (r["status"], r["last_error"]) for r in rows}
    assert state["good-1"] == ("fired", None) and state["good-2"] == ("fired", None)
    assert state["bad"][0] == "failed" and "unknown task" in state["bad"][1]
    assert await plat.pool.fetchval("SELECT count(*) FROM jobs") == 2
    assert await stream_messages(plat) == 2


async def test_two_scheduler_replicas_fire_each_timer_once(plat):
    """Timers claimed with FOR UPDATE SKIP LOCKED are fired by exactly one of two replicas."""
    from shvya_scheduler.handlers import fire_due_timers

    now = datetime.now(UTC)
    for i in range(40):
        await plat.bus.pool.execute(
            "INSERT INTO timers (kind, due_at, task_name, task_params, priority, idempotency_key)"
            " VALUES ('enqueue', $1, 'test.step', $2, 70, $3)",
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
    assert await stream_messages(plat) == 40
