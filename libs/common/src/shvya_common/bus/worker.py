"""The shared consumer loop: strict priority, retries on the schedule, dead letters, crash safety.

Each service has one durable pull consumer per priority level. Whenever a slot is free the loop
asks the levels in order, highest first, with `no_wait` pull requests for exactly as many jobs
as it can start at once, so a waiting higher-priority job is always started before any
lower-priority one, however long the latter has waited. When every level is empty the loop
sleeps on a doorbell (a core NATS subscription to the same subjects) or a short poll interval,
which also picks up delayed retries.

Per job: parse the envelope, count the delivery, claim the row, run the handler, then record
the outcome in the jobs table *before* acking, so a crash at any point leads to a redelivery
that the claim recognises. Handlers never see the NATS message.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ValidationError

from shvya_common.bus.jobs import JobBus
from shvya_common.bus.ledgers import ledgers_for
from shvya_common.bus.topology import ensure_consumers
from shvya_common.contracts.jobs import JobEnvelope, task_spec
from shvya_common.errors import DeferJob, PermanentError
from shvya_common.metrics import CONSUMER_ACK_PENDING, CONSUMER_PENDING, JOB_SECONDS, JOBS

log = structlog.get_logger(__name__)

MAX_PULL_BATCH = 256


@dataclass(frozen=True)
class JobContext:
    """What a handler may know about the job it runs."""

    job_id: uuid.UUID
    task: str
    priority: int
    attempt: int
    company_id: uuid.UUID | None
    lead_id: uuid.UUID | None
    # The record's status when this delivery claimed it ('sending' means a crash mid-send).
    prior_status: str | None = None


Handler = Callable[[Any, JobContext], Awaitable[dict[str, Any] | None]]


class _LevelPuller:
    """`no_wait` pull requests against one durable consumer, answered on a private inbox."""

    def __init__(self, nc: NATS, stream: str, consumer: str, level: int) -> None:
        self.nc = nc
        self.stream = stream
        self.consumer = consumer
        self.level = level
        self.api_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.sub: Subscription | None = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.nc.new_inbox())

    async def pull(self, batch: int) -> list[Msg]:
        assert self.sub is not None
        request = json.dumps({"batch": batch, "no_wait": True}).encode()
        await self.nc.publish(self.api_subject, request, reply=self.sub.subject)
        msgs: list[Msg] = []
        while len(msgs) < batch:
            try:
                msg = await self.sub.next_msg(timeout=5.0)
            except TimeoutError:
                break
            status = msg.headers.get("Status") if msg.headers else None
            if status is None and msg.reply:
                msgs.append(msg)
            elif status in ("404", "408", "409"):
                break  # no (more) messages for this request
        return msgs

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


class Worker:
    """Runs a service's handlers over its consumers until stopped."""

    def __init__(
        self,
        *,
        service: str,
        bus: JobBus,
        nc: NATS,
        handlers: dict[str, Handler],
        retry_schedule: list[float],
        concurrency: int = 16,
        ack_wait: float = 30.0,
        poll_seconds: float = 0.25,
    ) -> None:
        self.service = service
        self.bus = bus
        self.nc = nc
        self.handlers = handlers
        self.retry_schedule = list(retry_schedule)
        self.max_attempts = len(self.retry_schedule) + 1
        self.concurrency = concurrency
        self.ack_wait = ack_wait
        self.poll_seconds = poll_seconds
        self.ledgers = ledgers_for(bus.pool)
        self._pullers: list[_LevelPuller] = []
        self._doorbells: list[Subscription] = []
        self._bell = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], Msg] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        topo = self.bus.topology
        configs = await ensure_consumers(
            self.bus.js, topo, self.service, self.handlers.keys(), self.ack_wait
        )
        for level_config in configs:
            assert level_config.durable_name is not None
            level = int(level_config.durable_name.rsplit("-p", 1)[1])
            puller = _LevelPuller(self.nc, topo.jobs_stream, level_config.durable_name, level)
            await puller.start()
            self._pullers.append(puller)
        for task in self.handlers:
            self._doorbells.append(
                await self.nc.subscribe(topo.doorbell_subject(task), cb=self._ring)
            )
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"{self.service}-worker"),
            asyncio.create_task(self._heartbeat(), name=f"{self.service}-heartbeat"),
            asyncio.create_task(self._pending_gauge(), name=f"{self.service}-pending"),
        ]
        log.info("worker_started", tasks=sorted(self.handlers), concurrency=self.concurrency)

    async def _ring(self, _msg: Msg) -> None:
        self._bell.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop fetching, let the jobs in hand finish (they ack themselves), then detach."""
        self._stopping.set()
        self._bell.set()
        self._slot_freed.set()
        loop_task = self._tasks[0] if self._tasks else None
        if loop_task is not None:
            await loop_task
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=timeout or self.ack_wait)
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)
        for sub in self._doorbells:
            await sub.unsubscribe()
        for puller in self._pullers:
            await puller.stop()
        log.info("worker_stopped")

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._bell.clear()
            got: list[Msg] = []
            try:
                for puller in self._pullers:
                    need = min(free - len(got), MAX_PULL_BATCH)
                    if need <= 0:
                        break
                    got.extend(await puller.pull(need))
            except Exception as err:  # NATS down or reconnecting: wait and ask again
                log.warning("pull_failed", error=str(err))
                await asyncio.sleep(self.poll_seconds)
                continue
            for msg in got:
                task = asyncio.create_task(self._run(msg))
                self._inflight[task] = msg
                task.add_done_callback(self._done)
            if not got:
                try:
                    await asyncio.wait_for(self._bell.wait(), self.poll_seconds)
                except TimeoutError:
                    pass

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job_loop_error", error=repr(task.exception()))

    async def _heartbeat(self) -> None:
        """Tell JetStream that jobs in hand are still being worked on, so none is redelivered
        while its handler is merely slow; a killed worker stops beating and its jobs return."""
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            for msg in list(self._inflight.values()):
                try:
                    await msg.in_progress()
                except Exception as err:
                    log.debug("heartbeat_failed", error=str(err))

    async def _pending_gauge(self) -> None:
        while True:
            for puller in self._pullers:
                try:
                    info = await self.bus.js.consumer_info(puller.stream, puller.consumer)
                    labels = (puller.stream, puller.consumer)
                    CONSUMER_PENDING.labels(*labels).set(info.num_pending or 0)
                    CONSUMER_ACK_PENDING.labels(*labels).set(info.num_ack_pending or 0)
                except Exception as err:
                    log.debug("consumer_info_failed", error=str(err))
            await asyncio.sleep(5.0)

    async def _run(self, msg: Msg) -> None:
        try:
            envelope = JobEnvelope.model_validate_json(msg.data)
        except ValidationError as err:
            log.error("job_envelope_invalid", subject=msg.subject, error=str(err))
            JOBS.labels(self.service, "unknown", "invalid").inc()
            await msg.term()
            return
        attempt = envelope.attempt_base + msg.metadata.num_delivered
        with structlog.contextvars.bound_contextvars(
            job_id=str(envelope.job_id),
            task=envelope.task,
            lead_id=str(envelope.lead_id) if envelope.lead_id else None,
            company_id=str(envelope.company_id) if envelope.company_id else None,
            attempt=attempt,
        ):
            await self._run_job(msg, envelope, attempt)

    async def _run_job(self, msg: Msg, envelope: JobEnvelope, attempt: int) -> None:
        task = envelope.task
        ledger = self.ledgers[task_spec(task).ledger]
        if attempt > self.max_attempts:
            await self._dead_letter(
                msg,
                envelope,
                attempt - 1,
                f"no outcome after {attempt - 1} deliveries: the worker crashed or timed out"
                " every time",
            )
            return
        claim = await ledger.claim(envelope, attempt)
        if claim.action == "duplicate":
            log.info("job_duplicate_delivery", status=claim.prior_status)
            JOBS.labels(self.service, task, "duplicate").inc()
            await msg.ack()
            return
        if claim.action == "orphan":
            await self._dead_letter(
                msg, envelope, attempt, "orphan: the enqueueing transaction never committed"
            )
            return

        started = time.perf_counter()
        try:
            handler = self.handlers.get(task)
            if handler is None:
                raise PermanentError(f"service {self.service!r} has no handler for {task!r}")
            context = self._context(envelope, attempt, claim.prior_status)
            result = await handler(self._params(envelope), context)
        except DeferJob as deferral:
            await ledger.defer(envelope, deferral.until, attempt - 1, deferral.reason)
            await msg.ack()
            JOBS.labels(self.service, task, "deferred").inc()
            log.info("job_deferred", until=deferral.until.isoformat(), reason=deferral.reason)
        except PermanentError as err:
            await self._dead_letter(msg, envelope, attempt, f"permanent: {err}")
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"[:2000]
            if attempt <= len(self.retry_schedule):
                delay = self.retry_schedule[attempt - 1]
                run_after = datetime.fromtimestamp(time.time() + delay, UTC)
                await ledger.retry(envelope, reason, run_after)
                await msg.nak(delay=delay)
                JOBS.labels(self.service, task, "retried").inc()
                log.warning("job_failed_will_retry", error=reason, retry_in=delay)
            else:
                await self._dead_letter(msg, envelope, attempt, reason)
        else:
            await ledger.complete(envelope, result)
            await msg.ack()
            JOBS.labels(self.service, task, "completed").inc()
            log.info("job_completed", seconds=round(time.perf_counter() - started, 4))
        finally:
            JOB_SECONDS.labels(self.service, task).observe(time.perf_counter() - started)

    @staticmethod
    def _params(envelope: JobEnvelope) -> Any:
        spec = task_spec(envelope.task)
        if spec.params is None:
            return envelope.params
        try:
            model: BaseModel = spec.params.model_validate(envelope.params)
        except ValidationError as err:
            raise PermanentError(f"invalid parameters for {envelope.task}: {err}") from err
        return model

    @staticmethod
    def _context(envelope: JobEnvelope, attempt: int, prior_status: str | None) -> JobContext:
        return JobContext(
            job_id=envelope.job_id,
            task=envelope.task,
            priority=envelope.priority,
            attempt=attempt,
            company_id=envelope.company_id,
            lead_id=envelope.lead_id,
            prior_status=prior_status,
        )

    async def _dead_letter(
        self, msg: Msg, envelope: JobEnvelope, attempts: int, reason: str
    ) -> None:
        """DLQ stream first, then the row, then the ack: each step is safe to repeat."""
        payload = {
            "envelope": envelope.model_dump(mode="json"),
            "error": reason[:2000],
            "attempts": attempts,
            "service": self.service,
            "dead_at": datetime.now(UTC).isoformat(),
        }
        await self.bus.js.publish(
            self.bus.topology.dlq_subject(envelope.task),
            json.dumps(payload).encode(),
            headers={"Nats-Msg-Id": f"{envelope.job_id}:dlq:{msg.metadata.sequence.stream}"},
        )
        await self.ledgers[task_spec(envelope.task).ledger].dead(envelope, reason[:2000], attempts)
        await msg.ack()
        JOBS.labels(self.service, envelope.task, "dead_lettered").inc()
        log.error("job_dead_lettered", error=reason, attempts=attempts)
