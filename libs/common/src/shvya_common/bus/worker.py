"""The shared consumer loop: strict priority, reserved P1 capacity, fenced claims, retries on
each task's schedule, dead letters, and outages that are not counted as attempts.

**Pulling.** Each service has one durable pull consumer per priority level. Whenever a slot is
free the loop asks the levels in order, highest first, with `no_wait` pull requests for exactly
as many jobs as it can start, so a waiting higher-priority job is always started before any
lower one. When every level is empty it sleeps on a doorbell (a core NATS subscription to the
same subjects), a freed slot (when a level was held back for lack of room), or a short poll
interval. A level found empty is not asked again until its doorbell rings or the poll interval
passes (retries and redeliveries reach it then), so a busy worker asks one level per round,
not six. A ring whose message the stream has not stored yet (the doorbell can be first) is
asked again after 1, 2, 4 and 8 ms rather than at the next poll.

The raw `$JS.API.CONSUMER.MSG.NEXT` request is used instead of nats-py's
`pull_subscribe(...).fetch()` on purpose: `fetch` sends `expires` with its first request
whenever nothing is buffered, and the server then treats the `no_wait` probe as a lingering
pull, so asking six empty levels in turn would wait out a timeout on each, and an
abandoned lingering request can later capture a message meant for a newer one. Every request
here gets its own inbox (a subscription of its own, since a pulled message arrives under its
own subject); a message that arrives after its request was given up is nak'ed at once, and one
sent to a closed inbox is redelivered after `ack_wait`: never lost.

**Capacity.** `P1_RESERVED_SLOTS` of the `WORKER_CONCURRENCY` slots only take conversational
work (priority 95 and up: replies and follow-ups), so a burst of summaries or P2 jobs can never
fill the worker and make a lead wait. `WORKER_LOW_PRIORITY_SLOTS` caps the jobs below priority
95 in hand at once, for a worker whose slots are cheap but whose event loop is not: engage holds
512 jobs, and 384 summaries at once would keep its loop so busy that a lead's reply waits for
CPU, not for a slot.

**Per job.** Parse the envelope (a malformed one is dead-lettered with its reason), claim the
row (`ledgers`: counts the attempt and takes a lease), run the handler, record the outcome
(fenced by the attempt), then ack. Claims and completions of the jobs in hand are coalesced
(`batching.Coalescer`): one statement per ledger for all those made while the previous one
ran, so a busy worker pays about one round trip per batch, not per job; conversational claims
are batched apart, so a reply's claim never queues behind a batch of P2 claims. A delivery whose row
a live run holds is nak'ed until that run ends, so a redelivery never runs a handler twice at
once. Outcome writes are retried while
the database is down, holding the job (its heartbeat keeps JetStream waiting) rather than
dropping it.

**Outages.** When a claim fails, or a handler fails while the database is unreachable, the
failure is the platform's, not the job's: the attempt is given back, the message is nak'ed with
a backoff, and the loop stops pulling until PostgreSQL and NATS answer again, then resumes by
itself. A three-minute outage therefore dead-letters nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import json
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from shvya_common import tracing
from shvya_common.bus.batching import Coalescer
from shvya_common.bus.jobs import JobBus
from shvya_common.bus.ledgers import Claim, Ledger, LedgerName
from shvya_common.bus.registry import Handler, Registration, RetryPolicy, plain
from shvya_common.bus.topology import TopologyKeeper, ensure_consumers
from shvya_common.contracts.jobs import JobEnvelope
from shvya_common.contracts.subjects import priority_level
from shvya_common.db import is_outage
from shvya_common.errors import DeferJob, PermanentError
from shvya_common.metrics import CONSUMER_ACK_PENDING, CONSUMER_PENDING, JOB_SECONDS, JOBS
from shvya_common.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

MAX_PULL_BATCH = 256
PULL_REPLY_TIMEOUT = 5.0
# Priorities at or above this may use the reserved slots.
CONVERSATIONAL_PRIORITY = 95
OUTAGE_BACKOFF_MAX = 30.0
T = TypeVar("T")


@dataclass(frozen=True)
class JobContext:
    """What a handler may know about the job it runs."""

    job_id: uuid.UUID
    task: str
    priority: int
    attempt: int
    company_id: uuid.UUID | None
    lead_id: uuid.UUID | None
    # The record's status when this delivery claimed it ('sending' means a run died mid-send).
    prior_status: str | None = None
    generation: int = 0
    max_attempts: int = 6


# The job the current task runs, for code far from the handler that orders work by priority
# (the WhatsApp Web account lock).
CURRENT_JOB: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "shvya_current_job", default=None
)


class ConsumerGone(Exception):
    """A pull request found no consumer (NATS lost it)."""


class _Puller:
    """`no_wait` pull requests against one stream's consumers, each on its own inbox."""

    def __init__(self, nc: NATS, stream: str) -> None:
        self.nc = nc
        self.stream = stream

    async def start(self) -> None:
        return None

    async def pull(self, consumer: str, batch: int) -> list[Msg]:
        # JetStream delivers a pulled message under its own subject, not the request's reply
        # subject, so only a subscription of its own tells which request a message answers.
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def collect(msg: Msg) -> None:
            queue.put_nowait(msg)

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=collect)
        try:
            await self.nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{consumer}",
                json.dumps({"batch": batch, "no_wait": True}).encode(),
                reply=inbox,
            )
            msgs: list[Msg] = []
            while len(msgs) < batch:
                try:
                    msg = await asyncio.wait_for(queue.get(), PULL_REPLY_TIMEOUT)
                except TimeoutError:
                    break
                status = _status(msg)
                if status is None and msg.reply:
                    msgs.append(msg)
                elif status == "503":
                    raise ConsumerGone(consumer)
                elif status in ("404", "408", "409") or status is None:
                    break
            return msgs
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            # Anything that raced in after we stopped reading goes back at once; anything the
            # server sends to the closed inbox is redelivered after ack_wait.
            while not queue.empty():
                late = queue.get_nowait()
                if late.reply and not _status(late):
                    with contextlib.suppress(Exception):
                        await late.nak()

    async def stop(self) -> None:
        return None


def _status(msg: Msg) -> str | None:
    return msg.headers.get("Status") if msg.headers else None


@dataclass
class _InFlight:
    msg: Msg
    level: int
    ledger: str | None = None
    job_id: uuid.UUID | None = None
    attempt: int = 0


class Worker:
    """Runs a service's handlers over its consumers until stopped."""

    def __init__(
        self,
        *,
        service: str,
        bus: JobBus,
        nc: NATS,
        handlers: Mapping[str, Registration | Handler],
        retry_schedule: list[float],
        concurrency: int = 16,
        reserved_p1: int | None = None,
        low_priority_slots: int | None = None,
        ack_wait: float = 30.0,
        poll_seconds: float = 0.25,
        keeper: TopologyKeeper | None = None,
    ) -> None:
        self.service = service
        self.bus = bus
        self.nc = nc
        self.registrations: dict[str, Registration] = {
            name: h if isinstance(h, Registration) else plain({name: h})[name]
            for name, h in handlers.items()
        }
        self.retry_schedule = list(retry_schedule)
        self.concurrency = concurrency
        self.reserved_p1 = (
            max(1, concurrency // 4) if reserved_p1 is None else min(reserved_p1, concurrency - 1)
        )
        if concurrency == 1:
            self.reserved_p1 = 0
        # The most jobs below the conversational priority in hand at once.
        self.low_slots = concurrency - self.reserved_p1
        if low_priority_slots is not None:
            self.low_slots = max(1, min(self.low_slots, low_priority_slots))
        self.ack_wait = ack_wait
        self.poll_seconds = poll_seconds
        self.keeper = keeper or bus.keeper
        self.name = f"{service}@{socket.gethostname()}:{os.getpid()}"
        self._levels: list[tuple[int, str]] = []
        self._puller: _Puller | None = None
        self._doorbells: list[Subscription] = []
        self._bell = asyncio.Event()
        self._slot_freed = asyncio.Event()
        # Levels that may have messages: set by their doorbell, cleared by a short pull.
        self._maybe: dict[int, bool] = {}
        self._rung: set[int] = set()
        self._refreshed = 0.0
        self._inflight: dict[asyncio.Task[None], _InFlight] = {}
        self._stopping = asyncio.Event()
        self._healthy = asyncio.Event()
        self._healthy.set()
        self._outage_backoff = 1.0
        self._tasks: list[asyncio.Task[None]] = []
        self._claims: Coalescer[LedgerName, tuple[JobEnvelope, int], Claim] = Coalescer(
            self._claim_batch
        )
        # Conversational claims have a coalescer (and so a round trip) of their own: a reply's
        # claim never waits behind a batch of a hundred summaries' claims being written.
        self._urgent_claims: Coalescer[LedgerName, tuple[JobEnvelope, int], Claim] = Coalescer(
            self._claim_batch
        )
        self._completes: Coalescer[
            LedgerName, tuple[JobEnvelope, int, dict[str, Any] | None], bool
        ] = Coalescer(self._complete_batch)

    async def _claim_batch(
        self, ledger: LedgerName, wanted: list[tuple[JobEnvelope, int]]
    ) -> list[Claim]:
        return await self.bus.ledgers[ledger].claim_many(
            wanted, lease=self.ack_wait, worker=self.name
        )

    async def _complete_batch(
        self, ledger: LedgerName, done: list[tuple[JobEnvelope, int, dict[str, Any] | None]]
    ) -> list[bool]:
        return await self.bus.ledgers[ledger].complete_many(done)

    # --- lifecycle ---

    async def start(self) -> None:
        topo = self.bus.topology
        tasks = list(self.registrations)
        configs = await ensure_consumers(self.bus.js, topo, self.service, tasks, self.ack_wait)
        if self.keeper is not None:
            self.keeper.add_consumers(self.service, tasks, self.ack_wait)
        for level_config in configs:
            assert level_config.durable_name is not None
            level = int(level_config.durable_name.rsplit("-p", 1)[1])
            self._levels.append((level, level_config.durable_name))
        self._puller = _Puller(self.nc, topo.jobs_stream)
        await self._puller.start()
        for task in tasks:
            self._doorbells.append(
                await self.nc.subscribe(topo.doorbell_subject(task), cb=self._ring)
            )
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"{self.service}-worker"),
            asyncio.create_task(self._heartbeat(), name=f"{self.service}-heartbeat"),
            asyncio.create_task(self._watch_consumers(), name=f"{self.service}-consumers"),
        ]
        log.info(
            "worker_started",
            tasks=sorted(tasks),
            concurrency=self.concurrency,
            reserved_p1=self.reserved_p1,
            low_priority_slots=self.low_slots,
        )

    async def _ring(self, msg: Msg) -> None:
        # <prefix>.jobs.p<level>.<task>.<id>: the prefix has no dots.
        token = msg.subject.split(".", 3)[2] if msg.subject.count(".") >= 3 else ""
        if token.startswith("p") and token[1:].isdigit():
            self._rung.add(int(token[1:]))
        else:
            self._rung.update(self._maybe)
        self._bell.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop fetching, let the jobs in hand finish (they ack themselves), then detach."""
        self._stopping.set()
        self._bell.set()
        self._slot_freed.set()
        self._healthy.set()
        if self._tasks:
            await self._tasks[0]
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight), timeout=timeout or self.ack_wait)
            if pending:  # redelivered after ack_wait; their leases lapse
                log.warning("worker_stop_abandoned_jobs", count=len(pending))
                await cancel_and_wait(pending)
        await cancel_and_wait(self._tasks[1:])
        for sub in self._doorbells:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._puller is not None:
            await self._puller.stop()
        log.info("worker_stopped")

    # --- the loop ---

    def _room(self, level: int, taken: int, taken_low: int) -> int:
        """How many more jobs of `level` may start now, with `taken` (of which `taken_low`
        below the conversational priority) already pulled in this round."""
        free = self.concurrency - len(self._inflight) - taken
        if level >= CONVERSATIONAL_PRIORITY:
            return free
        low = sum(1 for f in self._inflight.values() if f.level < CONVERSATIONAL_PRIORITY)
        return min(free, self.low_slots - low - taken_low)

    async def _loop(self) -> None:
        assert self._puller is not None
        loop = asyncio.get_running_loop()
        self._maybe = {level: True for level, _ in self._levels}
        retry_in = 0.0
        while not self._stopping.is_set():
            if not self._healthy.is_set():
                await self._recover()
                continue
            if len(self._inflight) >= self.concurrency:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._bell.clear()
            self._slot_freed.clear()
            rung, self._rung = self._rung, set()
            for level in rung:
                self._maybe[level] = True
            if loop.time() - self._refreshed >= self.poll_seconds:
                # Retries (nak delays) and redeliveries ring no doorbell: look everywhere now
                # and then, even while the hot levels keep the worker busy.
                self._refreshed = loop.time()
                self._maybe = dict.fromkeys(self._maybe, True)
            got: list[tuple[Msg, int]] = []
            taken_low = 0
            held_back = False
            try:
                for level, consumer in self._levels:
                    if not self._maybe.get(level, True):
                        continue
                    room = min(self._room(level, len(got), taken_low), MAX_PULL_BATCH)
                    if room <= 0:
                        held_back = True
                        continue
                    msgs = await self._puller.pull(consumer, room)
                    # A short answer means the level was drained at that moment.
                    self._maybe[level] = len(msgs) >= room
                    for msg in msgs:
                        got.append((msg, level))
                        if level < CONVERSATIONAL_PRIORITY:
                            taken_low += 1
            except ConsumerGone as gone:
                await self._repair(f"consumer {gone} is missing")
            except Exception as err:  # NATS down or reconnecting: wait and ask again
                self._degrade("pull", err)
            for msg, level in got:
                task = asyncio.create_task(self._run(msg, level))
                self._inflight[task] = _InFlight(msg, level)
                task.add_done_callback(self._done)
            if got or not self._healthy.is_set():
                retry_in = 0.0
                continue
            if rung and not self._rung:
                # Rung, but nothing there yet: the doorbell beat the stream. Ask again soon.
                retry_in = min(retry_in * 2 or 0.001, 0.016)
                if retry_in < 0.016:
                    self._rung |= rung
                    await self._idle(retry_in, held_back)
                    continue
            retry_in = 0.0
            await self._idle(self.poll_seconds, held_back)

    async def _idle(self, seconds: float, held_back: bool) -> None:
        """Sleep until a doorbell rings, a slot frees (if a level was held back for lack of
        room), or `seconds` pass."""
        waits = [asyncio.ensure_future(self._bell.wait())]
        if held_back:
            waits.append(asyncio.ensure_future(self._slot_freed.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job_loop_error", error=repr(task.exception()))

    # --- outages ---

    def _degrade(self, where: str, err: BaseException) -> None:
        if self._healthy.is_set():
            log.warning("worker_paused_dependency_down", where=where, error=type(err).__name__)
        self._healthy.clear()

    async def _dependencies_up(self) -> bool:
        if not self.nc.is_connected:
            return False
        try:
            async with asyncio.timeout(2.0):
                await self.bus.pool.fetchval("SELECT 1")
        except Exception:
            return False
        return True

    async def _recover(self) -> None:
        while not self._stopping.is_set():
            if await self._dependencies_up():
                self._healthy.set()
                self._outage_backoff = 1.0
                log.info("worker_resumed")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 1.0)

    def _backoff(self) -> float:
        delay = self._outage_backoff
        self._outage_backoff = min(self._outage_backoff * 2, OUTAGE_BACKOFF_MAX)
        return delay

    async def _repair(self, why: str) -> None:
        if self.keeper is None:
            return
        try:
            await self.keeper.repair(why)
        except Exception as err:
            self._degrade("repair", err)

    async def _persist(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run a state write, retrying while the database is unreachable (the job stays in
        hand, heartbeats keep it ours). Raises only once the worker is stopping."""
        delay = 0.5
        while True:
            try:
                return await write()
            except (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
                OSError,
                TimeoutError,
            ) as err:
                if isinstance(err, asyncpg.PostgresError) and not is_outage(err):
                    raise
                self._degrade("write", err)
                if self._stopping.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- heartbeats and consumers ---

    async def _heartbeat(self) -> None:
        """Tell JetStream the jobs in hand are still being worked on and extend their leases,
        so none is redelivered while its handler is merely slow; a killed worker stops beating
        and its jobs come back to another one."""
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            held: dict[str, list[tuple[uuid.UUID, int]]] = {}
            for flight in list(self._inflight.values()):
                with contextlib.suppress(Exception):
                    await flight.msg.in_progress()
                if flight.ledger is not None and flight.job_id is not None:
                    held.setdefault(flight.ledger, []).append((flight.job_id, flight.attempt))
            for ledger, rows in held.items():
                try:
                    await self.bus.ledgers[ledger].renew(rows, self.ack_wait)  # type: ignore[index]
                except Exception as err:
                    log.debug("lease_renew_failed", error=type(err).__name__)

    async def _watch_consumers(self) -> None:
        while True:
            for _, consumer in self._levels:
                try:
                    info = await self.bus.js.consumer_info(self.bus.topology.jobs_stream, consumer)
                    labels = (self.bus.topology.jobs_stream, consumer)
                    CONSUMER_PENDING.labels(*labels).set(info.num_pending or 0)
                    CONSUMER_ACK_PENDING.labels(*labels).set(info.num_ack_pending or 0)
                except NotFoundError:
                    await self._repair(f"consumer {consumer} is missing")
                except Exception as err:
                    log.debug("consumer_info_failed", error=type(err).__name__)
            await asyncio.sleep(5.0)

    # --- one job ---

    async def _run(self, msg: Msg, level: int) -> None:
        try:
            envelope = JobEnvelope.model_validate_json(msg.data)
        except ValidationError as err:
            await self._dead_letter_raw(
                msg, f"invalid envelope: {err.error_count()} error(s): {err}"
            )
            return
        registration = self.registrations.get(envelope.task)
        with structlog.contextvars.bound_contextvars(
            job_id=str(envelope.job_id),
            task=envelope.task,
            lead_id=str(envelope.lead_id) if envelope.lead_id else None,
            company_id=str(envelope.company_id) if envelope.company_id else None,
        ):
            if registration is None:
                await self._dead_letter_raw(
                    msg, f"service {self.service!r} has no handler for task {envelope.task!r}"
                )
                return
            attributes = {"shvya.task": envelope.task, "shvya.job_id": str(envelope.job_id)}
            with tracing.consumer_span(msg.subject, msg.headers, attributes):
                await self._run_job(msg, envelope, registration)

    def _flight(self) -> _InFlight | None:
        task = asyncio.current_task()
        return self._inflight.get(task) if task is not None else None

    async def _run_job(self, msg: Msg, env: JobEnvelope, reg: Registration) -> None:
        task = env.task
        ledger = self.bus.ledgers[reg.spec.ledger]
        delays = reg.retry.delays(self.retry_schedule)
        max_attempts = len(delays) + 1
        try:
            claims = (
                self._urgent_claims if env.priority >= CONVERSATIONAL_PRIORITY else self._claims
            )
            claim = await claims.submit(reg.spec.ledger, (env, max_attempts))
        except Exception as err:
            self._degrade("claim", err)
            await _quietly(msg.nak(delay=self._backoff()))
            JOBS.labels(self.service, task, "outage").inc()
            return
        if not await self._handle_claim(msg, env, ledger, claim):
            return
        flight = self._flight()
        if flight is not None:
            flight.ledger, flight.job_id, flight.attempt = (
                reg.spec.ledger,
                env.job_id,
                claim.attempt,
            )
        attempt = claim.attempt
        context = JobContext(
            job_id=env.job_id,
            task=task,
            priority=env.priority,
            attempt=attempt,
            company_id=env.company_id,
            lead_id=env.lead_id,
            prior_status=claim.prior_status,
            generation=env.generation,
            max_attempts=max_attempts,
        )
        started = time.perf_counter()
        token = CURRENT_JOB.set(context)
        try:
            with structlog.contextvars.bound_contextvars(attempt=attempt):
                await self._execute(msg, env, reg, ledger, context, delays)
        finally:
            CURRENT_JOB.reset(token)
            JOB_SECONDS.labels(self.service, task).observe(time.perf_counter() - started)

    async def _handle_claim(self, msg: Msg, env: JobEnvelope, ledger: Ledger, claim: Claim) -> bool:
        """Act on a claim that is not ours to run; True when the handler should run."""
        task = env.task
        if claim.action == "run":
            return True
        if claim.action == "finished":
            log.info("job_duplicate_delivery", status=claim.prior_status)
            JOBS.labels(self.service, task, "duplicate").inc()
            await _quietly(msg.ack())
        elif claim.action == "busy":
            # A live run holds the row: come back when its lease would have lapsed.
            JOBS.labels(self.service, task, "busy").inc()
            await _quietly(msg.nak(delay=claim.retry_in + 0.5))
        elif claim.action == "orphan":
            await self._dead_letter_stream(msg, env, "orphan: no row for this message", 0)
            JOBS.labels(self.service, task, "orphaned").inc()
            await _quietly(msg.ack())
        else:  # exhausted
            reason = (
                f"no outcome after {claim.attempt} attempts: the worker crashed or timed out"
                " every time"
            )
            await self._dead_letter(msg, env, ledger, claim.attempt, reason)
        return False

    async def _execute(
        self,
        msg: Msg,
        env: JobEnvelope,
        reg: Registration,
        ledger: Ledger,
        job: JobContext,
        delays: list[float],
    ) -> None:
        task, attempt = env.task, job.attempt
        try:
            params = _params(reg, env)
            result = await reg.handler(params, job)
        except DeferJob as deferral:
            until, why = deferral.until, deferral.reason
            moved = await self._persist(lambda: ledger.defer(env, attempt, until, why))
            if moved:
                await _quietly(msg.ack())
            JOBS.labels(self.service, task, "deferred").inc()
            log.info("job_deferred", until=deferral.until.isoformat(), reason=deferral.reason)
            return
        except asyncio.CancelledError:
            raise
        except Exception as err:
            await self._failed(msg, env, reg, ledger, job, delays, err)
            return
        ledger_name = reg.spec.ledger
        if await self._persist(lambda: self._completes.submit(ledger_name, (env, attempt, result))):
            await _quietly(msg.ack())
            JOBS.labels(self.service, task, "completed").inc()
            log.info("job_completed")
        else:
            log.warning("job_outcome_fenced", outcome="completed")

    async def _failed(
        self,
        msg: Msg,
        env: JobEnvelope,
        reg: Registration,
        ledger: Ledger,
        job: JobContext,
        delays: list[float],
        err: Exception,
    ) -> None:
        task, attempt = env.task, job.attempt
        reason = f"{type(err).__name__}: {err}"[:2000]
        tracing.mark_failed(err)
        if isinstance(err, PermanentError):
            await self._dead_letter(msg, env, ledger, attempt, f"permanent: {err}")
            return
        if isinstance(err, reg.retry.non_retryable):
            await self._dead_letter(msg, env, ledger, attempt, f"not retryable: {reason}")
            return
        if not await self._dependencies_up():
            # The platform failed, not the job: give the attempt back and wait for it.
            self._degrade("handler", err)
            await self._persist(lambda: ledger.release(env, attempt))
            await _quietly(msg.nak(delay=self._backoff()))
            JOBS.labels(self.service, task, "outage").inc()
            log.warning("job_released_during_outage", error=reason)
            return
        if attempt <= len(delays):
            delay = delays[attempt - 1]
            if reg.retry.jitter:
                delay *= random.uniform(1 - reg.retry.jitter, 1 + reg.retry.jitter)
            run_after = datetime.fromtimestamp(time.time() + delay, UTC)
            if await self._persist(lambda: ledger.retry(env, attempt, reason, run_after)):
                await _quietly(msg.nak(delay=delay))
            JOBS.labels(self.service, task, "retried").inc()
            log.warning("job_failed_will_retry", error=reason, retry_in=delay)
        else:
            await self._dead_letter(msg, env, ledger, attempt, reason)

    async def _dead_letter(
        self, msg: Msg, env: JobEnvelope, ledger: Ledger, attempt: int, reason: str
    ) -> None:
        """The row first (fenced), then the DLQ stream for operators, then the ack."""
        reason = reason[:2000]
        if not await self._persist(lambda: ledger.dead(env, attempt, reason)):
            log.warning("job_outcome_fenced", outcome="dlq")
            return
        await self._dead_letter_stream(msg, env, reason, attempt)
        await _quietly(msg.ack())
        JOBS.labels(self.service, env.task, "dead_lettered").inc()
        log.error("job_dead_lettered", error=reason, attempts=attempt)

    async def _dead_letter_stream(
        self, msg: Msg, env: JobEnvelope | None, reason: str, attempts: int
    ) -> None:
        payload: dict[str, Any] = {
            "envelope": env.model_dump(mode="json") if env is not None else None,
            "error": reason[:2000],
            "attempts": attempts,
            "service": self.service,
            "subject": msg.subject,
            "dead_at": datetime.now(UTC).isoformat(),
        }
        if env is None:
            payload["raw"] = base64.b64encode(msg.data[:65536]).decode()
        task = env.task if env is not None else "invalid"
        ident = (
            f"{env.job_id}:{env.generation}:{attempts}"
            if env
            else f"raw:{msg.metadata.sequence.stream}"
        )
        try:
            await self.bus.js.publish(
                self.bus.topology.dlq_subject(task),
                json.dumps(payload).encode(),
                headers={"Nats-Msg-Id": f"dlq:{ident}"},
            )
        except Exception as err:  # the row is the record; the stream is for inspection
            log.warning("dlq_stream_publish_failed", error=type(err).__name__)

    async def _dead_letter_raw(self, msg: Msg, reason: str) -> None:
        """A message we cannot run at all (bad envelope, task not ours): keep it and drop it."""
        await self._dead_letter_stream(msg, None, reason, 0)
        with contextlib.suppress(Exception):
            await msg.term()
        JOBS.labels(self.service, "unknown", "invalid").inc()
        log.error("job_envelope_invalid", subject=msg.subject, error=reason[:500])


def _params(reg: Registration, envelope: JobEnvelope) -> Any:
    if reg.params is None:
        return envelope.params
    try:
        model: BaseModel = reg.params.model_validate(envelope.params)
    except ValidationError as err:
        raise PermanentError(f"invalid parameters for {envelope.task}: {err}") from err
    return model


async def _quietly(action: Awaitable[object]) -> None:
    """Ack/nak on a connection that may be reconnecting: the message comes back if it is lost."""
    try:
        await action
    except Exception as err:
        log.debug("ack_failed", error=type(err).__name__)


__all__ = [
    "CURRENT_JOB",
    "Handler",
    "JobContext",
    "RetryPolicy",
    "Worker",
    "priority_level",
]
