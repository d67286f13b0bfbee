"""The status policy for WhatsApp Cloud failures that beat dispatch's record of their wamid.

Such a `failed` status is stored pending (`statuses`); when dispatch records the wamid, the
database trigger applies it and, unless the message was delivered or read, marks it due for the
policy (`provider_statuses.policy_due_at`, migration 0021) in dispatch's own transaction. A pass
here claims due rows (`FOR UPDATE SKIP LOCKED`, a batch at a time, so several ingest processes
share them without waiting on each other), runs `status_policy.apply_failure_policy` on them and
clears their marks, in one unit of work: a crash before the commit leaves the marks for the next
pass, and a cleared mark commits with its decision, so none is taken twice. Under the per-wamid
locks the webhook takes, a message reported delivered or read since the mark is passed over:
the customer has it. A row the policy cannot handle even on its own is cleared with a
`message.delivery_policy` event saying so, so it cannot stall the rows behind it.

`LateFailures` runs a pass every WHATSAPP_STATUS_LATE_POLL_SECONDS (and at once after a full
batch) beside ingest's HTTP server, and finishes the pass in hand when ingest stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter

import asyncpg
import structlog

from shvya_common.bus import JobBus
from shvya_common.db import is_outage
from shvya_common.metrics import WEBHOOK_ITEMS
from shvya_ingest.api import OUTAGE_ERRORS
from shvya_ingest.status_policy import StatusPolicyConfig, apply_failure_policy
from shvya_ingest.statuses import Failure, lock_provider_ids
from shvya_ingest.whatsapp_repository import record_event

log = structlog.get_logger(__name__)

CHANNEL = "whatsapp_cloud"
BATCH = 100
# The outcome of a claimed failure whose message was reported delivered or read since the mark.
PASSED_OVER = "passed_over_delivered"

_CLAIM = """
SELECT id, provider_message_id, message_id, errors, status_at
FROM provider_statuses
WHERE policy_due_at IS NOT NULL AND ($2::uuid IS NULL OR id = $2)
ORDER BY policy_due_at
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

# Read after the per-wamid locks, in a statement of its own: it sees a status the webhook filed
# while we waited.
_UNDELIVERED = """
SELECT id FROM messages
WHERE id = ANY($1::uuid[]) AND delivery_rank(delivery_status) < delivery_rank('delivered')
"""

_CLEAR = "UPDATE provider_statuses SET policy_due_at = NULL WHERE id = ANY($1::uuid[])"


def _is_outage(err: Exception) -> bool:
    return isinstance(err, OUTAGE_ERRORS) or (
        isinstance(err, asyncpg.PostgresError) and is_outage(err)
    )


async def _pass(
    bus: JobBus, config: StatusPolicyConfig, limit: int, only: uuid.UUID | None = None
) -> Counter[str]:
    async with bus.unit(acquire_timeout=5) as unit:
        due = await unit.conn.fetch(_CLAIM, limit, only)
        if not due:
            return Counter()
        await lock_provider_ids(unit.conn, [r["provider_message_id"] for r in due])
        undelivered = {
            r["id"] for r in await unit.conn.fetch(_UNDELIVERED, [r["message_id"] for r in due])
        }
        failures = [
            Failure(r["message_id"], r["errors"] or [], r["status_at"])
            for r in due
            if r["message_id"] in undelivered
        ]
        taken = await apply_failure_policy(unit.conn, unit, config, failures)
        await unit.conn.execute(_CLEAR, [r["id"] for r in due])
    taken[PASSED_OVER] += len(due) - len(failures)
    return +taken


async def _give_up(bus: JobBus, status_id: uuid.UUID, err: Exception) -> int:
    """Clear the mark of a row the policy fails on by itself, and say so on its message."""
    async with bus.pool.acquire(timeout=5) as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE provider_statuses p SET policy_due_at = NULL FROM messages m"
            " WHERE p.id = $1 AND p.policy_due_at IS NOT NULL AND m.id = p.message_id"
            " RETURNING m.id, m.company_id, m.lead_id",
            status_id,
        )
        if row is None:
            return 0
        await record_event(
            conn,
            row["company_id"],
            row["lead_id"],
            "message.delivery_policy",
            {
                "message_id": str(row["id"]),
                "outcome": "failed",
                "late_match": True,
                "reason": f"{type(err).__name__}: {err}"[:500],
            },
        )
    log.warning("late_failure_policy_failed", message_id=str(row["id"]), error=type(err).__name__)
    return 1


async def act_on_late_failures(
    bus: JobBus, config: StatusPolicyConfig, limit: int = BATCH
) -> Counter[str]:
    """One pass over up to `limit` due failures; returns their count by outcome (the policy's
    outcomes, and `passed_over_delivered`). An outage raises and leaves every mark in place."""
    try:
        taken = await _pass(bus, config, limit)
    except Exception as err:
        if _is_outage(err):
            raise
        # One row's bug must not hold back the others: each on its own, as the webhook does.
        log.warning("late_failure_batch_failed", error=type(err).__name__)
        taken = Counter()
        ids = await bus.pool.fetch(
            "SELECT id FROM provider_statuses WHERE policy_due_at IS NOT NULL"
            " ORDER BY policy_due_at LIMIT $1",
            limit,
        )
        for row in ids:
            try:
                taken += await _pass(bus, config, 1, row["id"])
            except Exception as single:
                if _is_outage(single):
                    raise
                taken["failed"] += await _give_up(bus, row["id"], single)
    for outcome, n in taken.items():
        WEBHOOK_ITEMS.labels(CHANNEL, "late_failure", outcome).inc(n)
    if taken:
        log.info("late_failure_policy", policy=dict(taken))
    return taken


class LateFailures:
    """The periodic pass, for ingest's lifespan: `start()`, then `stop()` before the pool
    closes."""

    def __init__(self, bus: JobBus, config: StatusPolicyConfig, interval: float) -> None:
        self.bus = bus
        self.config = config
        self.interval = interval
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="late-failures")

    async def stop(self) -> None:
        """Finish the pass in hand (one transaction), then return."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                taken = await act_on_late_failures(self.bus, self.config)
            except Exception as err:  # an outage: the marks wait for the next pass
                log.warning("late_failure_pass_failed", error=type(err).__name__)
                taken = Counter()
            if taken.total() >= BATCH:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
