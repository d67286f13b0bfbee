"""The timer loop: fire due timers by putting their rows back on the queue.

A 'resume' timer puts a parked job or send back (status queued, a new generation); an 'enqueue'
timer enqueues a new job under its idempotency key. Claiming, requeueing and marking fired share
one unit of work, published after COMMIT: a crash before COMMIT leaves the timers pending, and a
crash after it leaves committed rows the relay publishes. A timer that cannot fire (an unknown
task, parameters the contract refuses) is marked failed with its error inside its own savepoint,
so it never fails the rest of the tick or wedges the loop.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import cast

import asyncpg
import structlog

from shvya_common.bus import JobBus, Unit
from shvya_common.bus.ledgers import LedgerName
from shvya_common.db import is_outage
from shvya_common.metrics import TIMERS_FIRED
from shvya_scheduler.repository import TimerRepository

log = structlog.get_logger(__name__)


async def _fire(bus: JobBus, unit: Unit, timer: dict[str, object]) -> str:
    """Fire one timer inside `unit`; returns what happened."""
    if timer["kind"] == "resume":
        ledger_name, target = _resume_target(timer)
        item = await bus.ledgers[ledger_name].requeue(unit.conn, target)
        if item is None:
            return "target_gone"
        unit.add(item)
        TIMERS_FIRED.labels("resume").inc()
        return "resumed"
    await unit.enqueue_job(
        str(timer["task_name"]),
        cast(dict[str, object], timer["task_params"] or {}),
        cast(str | None, timer["idempotency_key"]) or f"timer:{timer['id']}",
        cast(int | None, timer["priority"]),
        company_id=cast(uuid.UUID | None, timer["company_id"]),
        lead_id=cast(uuid.UUID | None, timer["lead_id"]),
    )
    TIMERS_FIRED.labels("enqueue").inc()
    return "enqueued"


def _resume_target(timer: dict[str, object]) -> tuple[LedgerName, uuid.UUID]:
    if timer["target_id"] is not None:
        return cast(LedgerName, timer["ledger"]), cast(uuid.UUID, timer["target_id"])
    # Timers written before the outbox carried the parked message itself.
    envelope = cast(dict[str, str], timer["envelope"])
    ledger: LedgerName = "messages" if envelope["task"] == "dispatch.send" else "jobs"
    return ledger, uuid.UUID(envelope["job_id"])


async def fire_due_timers(bus: JobBus, limit: int) -> int:
    """Fire up to `limit` due timers; returns how many were claimed."""
    async with bus.unit() as unit:
        due = await TimerRepository.claim_due_timers(unit.conn, limit)
        if not due:
            return 0
        fired, failed = [], []
        for record in due:
            timer = dict(record)
            try:
                async with unit.conn.transaction():  # a savepoint per timer
                    before = len(unit.outgoing)
                    try:
                        outcome = await _fire(bus, unit, timer)
                    except BaseException:
                        del unit.outgoing[before:]
                        raise
            except (ValueError, TypeError, LookupError, asyncpg.PostgresError) as err:
                if isinstance(err, asyncpg.PostgresError) and is_outage(err):
                    raise
                failed.append((timer["id"], f"{type(err).__name__}: {err}"[:2000]))
                log.error("timer_failed", timer_id=str(timer["id"]), error=str(err)[:300])
                continue
            fired.append(timer["id"])
            if outcome == "target_gone":
                log.info("timer_target_gone", timer_id=str(timer["id"]))
        await TimerRepository.mark_fired(unit.conn, fired)
        await TimerRepository.mark_failed(unit.conn, failed)
    log.info("timers_fired", count=len(fired), failed=len(failed))
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
