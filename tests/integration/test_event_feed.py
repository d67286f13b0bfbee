"""The event feed: every event enters it, the scheduler's reactors run once per event, and a
reactor that keeps failing sets its event aside without blocking the others."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shvya_common.bus import Unit
from shvya_common.contracts.events import EventType
from shvya_common.events import record_event
from shvya_scheduler import feed
from shvya_scheduler.feed import FeedEvent, feed_once

pytestmark = pytest.mark.integration


@pytest.fixture
def reactors(monkeypatch):
    """A clean reactor list for this test (the real ones register at import)."""
    monkeypatch.setattr(feed, "_REACTORS", [])


async def company(plat) -> uuid.UUID:
    return await plat.pool.fetchval("INSERT INTO companies (name) VALUES ('Feed') RETURNING id")


async def test_each_event_runs_its_reactors_once_across_replicas(plat, reactors):
    """Four concurrent feed passes over 50 events run the matching reactor once per event and
    enqueue what it asks for in the same unit of work."""
    seen: list[uuid.UUID] = []

    @feed.reacts_to(EventType.LEAD_CREATED)
    async def on_lead(unit: Unit, event: FeedEvent) -> None:
        seen.append(event.id)
        await unit.enqueue_job("test.work", {"event": str(event.id)}, f"feed:{event.id}")

    cid = await company(plat)
    for n in range(50):
        await record_event(plat.pool, cid, None, EventType.LEAD_CREATED, {"n": n})
    await record_event(plat.pool, cid, None, EventType.CHANNEL_PAUSED, {})
    taken = await asyncio.gather(*(feed_once(plat.bus, 10) for _ in range(4)))
    while sum(taken) < 51:
        taken.append(await feed_once(plat.bus, 10))
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 50
    assert await plat.pool.fetchval("SELECT count(*) FROM event_feed") == 0
    assert await plat.pool.fetchval("SELECT count(*) FROM jobs WHERE task_name = 'test.work'") == 50


async def test_a_failing_reactor_sets_its_event_aside_after_five_attempts(plat, reactors):
    """An event whose reactor raises stays in the feed with its error, is retried on later
    passes, and after five attempts is skipped; other events are not held up."""
    good: list[str] = []

    @feed.reacts_to(EventType.LEAD_CREATED)
    async def fragile(unit: Unit, event: FeedEvent) -> None:
        if event.payload.get("bad"):
            raise ValueError("cannot handle this one")
        good.append(event.payload["name"])

    cid = await company(plat)
    await record_event(plat.pool, cid, None, EventType.LEAD_CREATED, {"bad": True})
    await record_event(plat.pool, cid, None, EventType.LEAD_CREATED, {"name": "ok"})
    for _ in range(6):
        await feed_once(plat.bus, 10)
    row = await plat.pool.fetchrow("SELECT attempts, last_error FROM event_feed")
    assert row["attempts"] == 5 and row["last_error"] == "ValueError: cannot handle this one"
    assert good == ["ok"]
    assert await feed_once(plat.bus, 10) == 0
