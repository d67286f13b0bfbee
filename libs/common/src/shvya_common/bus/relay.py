"""The relay and the reconciler: what makes "committed" imply "will run".

- The **relay** republishes rows whose publish JetStream never confirmed: the writer crashed
  between COMMIT and publish, NATS was down, or the publish timed out. It takes rows `queued`
  with no `published_at` older than a short grace (the writer's own publish usually wins),
  locked with SKIP LOCKED so replicas split the work, and republishes them under the same
  `Nats-Msg-Id`: JetStream drops the copy if the first publish did land.
- The **reconciler** finds rows that have made no progress past a horizon: `queued`, `failed`
  or `processing` jobs and `queued`, `retrying` or `sending` sends, untouched for
  `RECONCILE_HORIZON_SECONDS` and with no live lease, confirmed or not (a row it bumped whose
  republish did not go out is in a status the relay does not take, so the next pass retries
  it). For each it asks JetStream for the last message on the job's own subject; if there is
  none (NATS lost its data, a stream was purged), the row gets a new generation and is
  published again (Oban's Lifeline and River's rescuer do the same for their tables). The
  generation bump is fenced on the row being unchanged, so two reconcilers never both
  republish it; rows found present are remembered until the next horizon, so a long backlog
  is not looked up on every pass.

Both run in the scheduler (any number of replicas) and never hold a row lock while waiting on
the network longer than one publish batch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import structlog
from asyncpg import Record
from nats.js.errors import NotFoundError

from shvya_common.bus.jobs import JobBus
from shvya_common.bus.ledgers import Cursor, LedgerName, Outgoing, envelope_from_row
from shvya_common.metrics import OUTBOX_UNPUBLISHED, RECONCILER_REPUBLISHED

log = structlog.get_logger(__name__)

EXISTENCE_CHECKS_IN_FLIGHT = 64


@dataclass(frozen=True)
class RelayConfig:
    interval: float = 1.0
    grace: float = 2.0
    batch: int = 500
    reconcile_interval: float = 15.0
    horizon: float = 120.0


class Relay:
    def __init__(self, bus: JobBus, config: RelayConfig) -> None:
        self.bus = bus
        self.config = config
        # (ledger, id, generation) -> monotonic time it was last seen present in JetStream.
        self._present: dict[tuple[str, uuid.UUID, int], float] = {}

    async def relay_once(self) -> int:
        """Republish unconfirmed rows; returns how many JetStream acknowledged."""
        total = 0
        for name, ledger in self.bus.ledgers.items():
            async with self.bus.pool.acquire() as conn, conn.transaction():
                items = await ledger.unpublished(conn, self.config.grace, self.config.batch)
                if not items:
                    OUTBOX_UNPUBLISHED.labels(name).set(0)
                    continue
                done = await self.bus.publisher.publish(items, source="relay", confirm=False)
                await ledger.mark_published(conn, done)
            OUTBOX_UNPUBLISHED.labels(name).set(len(items) - len(done))
            total += len(done)
            log.info("relay_republished", ledger=name, rows=len(items), published=len(done))
        return total

    async def reconcile_once(self) -> int:
        """Republish stuck rows whose message JetStream no longer has; returns how many."""
        republished = 0
        now = time.monotonic()
        horizon = self.config.horizon
        self._present = {k: t for k, t in self._present.items() if now - t < horizon}
        checks = asyncio.Semaphore(EXISTENCE_CHECKS_IN_FLIGHT)
        for name, ledger in self.bus.ledgers.items():
            after: Cursor | None = None
            while True:
                rows = await ledger.stale(self.bus.pool, horizon, after, self.config.batch)
                if not rows:
                    break
                after = (rows[-1]["updated_at"], rows[-1]["id"])
                todo = [r for r in rows if (name, r["id"], r["generation"]) not in self._present]

                found = await asyncio.gather(*(self._checked(checks, name, r) for r in todo))
                lost: list[Outgoing] = []
                for row, ok in zip(todo, found, strict=True):
                    if ok:
                        self._present[(name, row["id"], row["generation"])] = now
                        continue
                    bumped = await ledger.bump(self.bus.pool, row)
                    if bumped is not None:
                        lost.append(bumped)
                        RECONCILER_REPUBLISHED.labels(name, row["status"]).inc()
                if lost:
                    await self.bus.publisher.publish(lost, source="reconciler")
                    republished += len(lost)
                    log.warning("reconciler_republished", ledger=name, rows=len(lost))
                if len(rows) < self.config.batch:
                    break
        return republished

    async def _checked(self, checks: asyncio.Semaphore, ledger: LedgerName, row: Record) -> bool:
        async with checks:
            return await self._has_message(ledger, row)

    async def _has_message(self, ledger: LedgerName, row: Record) -> bool:
        env = envelope_from_row(ledger, row)
        subject = self.bus.topology.job_subject(env.task, env.priority, env.job_id)
        try:
            await self.bus.js.get_last_msg(self.bus.topology.jobs_stream, subject)
        except NotFoundError:
            return False
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay every `interval`, reconcile every `reconcile_interval`, until `stopping`."""
        last_reconcile = time.monotonic()
        while not stopping.is_set():
            try:
                await self.relay_once()
                if time.monotonic() - last_reconcile >= self.config.reconcile_interval:
                    last_reconcile = time.monotonic()
                    await self.reconcile_once()
            except Exception as err:  # an outage: the rows wait in PostgreSQL
                log.warning("relay_pass_failed", error=f"{type(err).__name__}: {err}"[:300])
            try:
                await asyncio.wait_for(stopping.wait(), self.config.interval)
            except TimeoutError:
                pass
