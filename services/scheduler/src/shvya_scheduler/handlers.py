"""The timer loop: fire due timers by publishing their jobs.

A 'resume' timer puts a parked job or send back on the queue with its attempt count kept; an
'enqueue' timer enqueues a new job under its idempotency key. Claiming, publishing and marking
fired share one transaction: a crash before COMMIT leaves the timers pending, and their publish
is de-duplicated by message id when they fire again.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog

from shvya_common.bus import JobBus
from shvya_common.bus.ledgers import ledgers_for
from shvya_common.contracts import JobEnvelope, task_spec
from shvya_common.metrics import TIMERS_FIRED
from shvya_scheduler.repository import TimerRepository

log = structlog.get_logger(__name__)


async def fire_due_timers(bus: JobBus, limit: int) -> int:
    """Fire up to `limit` due timers; returns how many were claimed."""
    ledgers = ledgers_for(bus.pool)
    async with bus.pool.acquire() as conn, conn.transaction():
        due = await TimerRepository.claim_due_timers(conn, limit)
        if not due:
            return 0
        publishes = []
        for timer in due:
            if timer["kind"] == "resume":
                envelope = JobEnvelope.model_validate(timer["envelope"])
                ledger = ledgers[task_spec(envelope.task).ledger]
                if await ledger.requeue(conn, envelope.job_id):
                    fresh = envelope.model_copy(update={"enqueued_at": datetime.now(UTC)})
                    publishes.append(bus.publish(fresh, f"{envelope.job_id}:timer:{timer['id']}"))
                    TIMERS_FIRED.labels("resume").inc()
                else:
                    log.info("timer_target_gone", timer_id=str(timer["id"]))
            else:
                await bus.enqueue_job(
                    timer["task_name"],
                    timer["task_params"] or {},
                    timer["idempotency_key"] or f"timer:{timer['id']}",
                    timer["priority"],
                    conn=conn,
                    company_id=timer["company_id"],
                    lead_id=timer["lead_id"],
                )
                TIMERS_FIRED.labels("enqueue").inc()
        await asyncio.gather(*publishes)
        await TimerRepository.mark_fired(conn, [t["id"] for t in due])
    log.info("timers_fired", count=len(due))
    return len(due)


async def timer_loop(bus: JobBus, stopping: asyncio.Event, tick: float, batch: int) -> None:
    """Run until `stopping` is set; a full batch is followed at once by the next."""
    while not stopping.is_set():
        try:
            fired = await fire_due_timers(bus, batch)
        except Exception as err:  # a dependency outage: keep the loop alive
            log.warning("timer_tick_failed", error=f"{type(err).__name__}: {err}")
            fired = 0
        if fired < batch:
            try:
                await asyncio.wait_for(stopping.wait(), tick)
            except TimeoutError:
                pass
