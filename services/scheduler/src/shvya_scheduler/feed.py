"""The event feed's consumer: run the reactors of each new event, exactly once.

Every event enters `event_feed` in the transaction that wrote it (migration 0009). A pass takes
the oldest rows `FOR UPDATE SKIP LOCKED` (so replicas split them), runs every reactor whose
types match, and deletes the rows, all in one unit of work of the job bus: what the reactors
enqueue (a webhook delivery, a stop of an enrolment) commits together with the rows leaving the
feed, and is published after. Each event runs inside its own savepoint; a reactor that fails
leaves its event in the feed with the error and an attempt counted, and after five attempts the
event is set aside (kept, with its error, for an operator) instead of blocking the rest.

    @reacts_to(EventType.MESSAGE_RECEIVED, EventType.LEAD_OPTED_OUT)
    async def stop_enrolments(unit: Unit, event: FeedEvent) -> None: ...

After a pass commits, one `LiveNotice` per company names the events it took, on core NATS
(`<prefix>.live.<company id>`): ingest turns them into the console's live stream. A notice is a
hint (the console re-reads through the API), so a publish that fails is only logged.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from shvya_common.bus import JobBus, Unit
from shvya_common.contracts.events import EventType
from shvya_common.contracts.live import MAX_NOTICE_EVENTS, LiveEvent, LiveNotice
from shvya_common.db import is_outage

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class FeedEvent:
    id: uuid.UUID
    company_id: uuid.UUID | None
    lead_id: uuid.UUID | None
    type: str
    payload: dict[str, Any]
    created_at: datetime


Reactor = Callable[[Unit, FeedEvent], Awaitable[None]]
_REACTORS: list[tuple[frozenset[str], Reactor]] = []


def reacts_to(*types: EventType) -> Callable[[Reactor], Reactor]:
    """Register a reactor for these event types (all types when none are named)."""
    names = frozenset(EventType(t).value for t in types)

    def register(func: Reactor) -> Reactor:
        _REACTORS.append((names, func))
        return func

    return register


def reactors_for(kind: str) -> list[Reactor]:
    return [func for names, func in _REACTORS if not names or kind in names]


_TAKE = """
WITH picked AS (
    SELECT event_id FROM event_feed WHERE attempts < $2
    ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED
)
SELECT e.id, e.company_id, e.lead_id, e.type, e.payload, e.created_at
FROM events e JOIN picked p ON p.event_id = e.id
ORDER BY e.created_at, e.id
"""


async def feed_once(bus: JobBus, batch: int) -> int:
    """Run the reactors of up to `batch` events; returns how many events were taken."""
    taken: list[FeedEvent] = []
    async with bus.unit() as unit:
        rows = await unit.conn.fetch(_TAKE, batch, MAX_ATTEMPTS)
        if not rows:
            return 0
        done: list[uuid.UUID] = []
        for row in rows:
            event = FeedEvent(
                row["id"],
                row["company_id"],
                row["lead_id"],
                row["type"],
                row["payload"] or {},
                row["created_at"],
            )
            before = len(unit.outgoing)
            try:
                async with unit.conn.transaction():  # a savepoint per event
                    for reactor in reactors_for(event.type):
                        await reactor(unit, event)
            except Exception as err:
                del unit.outgoing[before:]
                if isinstance(err, asyncpg.PostgresError) and is_outage(err):
                    raise
                if isinstance(err, OSError | asyncpg.InterfaceError):
                    raise
                reason = f"{type(err).__name__}: {err}"[:2000]
                log.error(
                    "feed_reactor_failed", event_id=str(event.id), type=event.type, error=reason
                )
                await unit.conn.execute(
                    "UPDATE event_feed SET attempts = attempts + 1, last_error = $2"
                    " WHERE event_id = $1",
                    event.id,
                    reason,
                )
                continue
            done.append(event.id)
            taken.append(event)
        await unit.conn.execute("DELETE FROM event_feed WHERE event_id = ANY($1::uuid[])", done)
    await publish_notices(bus, taken)
    return len(rows)


def notices_of(events: list[FeedEvent]) -> list[LiveNotice]:
    """One notice per company, naming at most MAX_NOTICE_EVENTS of its events."""
    notices: dict[uuid.UUID, LiveNotice] = {}
    for event in events:
        if event.company_id is None:
            continue
        notice = notices.setdefault(event.company_id, LiveNotice(company_id=event.company_id))
        if len(notice.events) < MAX_NOTICE_EVENTS:
            notice.events.append(
                LiveEvent(
                    id=event.id,
                    type=event.type,
                    lead_id=event.lead_id,
                    created_at=event.created_at,
                )
            )
        else:
            notice.truncated = True
    return list(notices.values())


async def publish_notices(bus: JobBus, events: list[FeedEvent]) -> None:
    """Tell the console, after COMMIT, which events were written (core NATS, fire and forget)."""
    try:
        for notice in notices_of(events):
            await bus.nc.publish(
                bus.topology.live_subject(notice.company_id), notice.model_dump_json().encode()
            )
    except Exception as err:  # a hint only: the console re-reads when it reconnects
        log.debug("live_notice_not_published", error=type(err).__name__)


async def feed_loop(bus: JobBus, stopping: asyncio.Event, tick: float, batch: int) -> None:
    """Consume the feed until `stopping` is set; a full batch is followed at once by the next."""
    while not stopping.is_set():
        try:
            taken = await feed_once(bus, batch)
        except Exception as err:  # a dependency outage: the events wait in the feed
            log.warning("feed_pass_failed", error=f"{type(err).__name__}: {err}"[:300])
            taken = 0
        if taken < batch:
            try:
                await asyncio.wait_for(stopping.wait(), tick)
            except TimeoutError:
                pass
