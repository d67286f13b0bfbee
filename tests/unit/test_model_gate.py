"""The model gate: admission by priority, per-company shares, and the limit's increase and
decrease, without a server."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shvya_common.bus import CURRENT_JOB, JobContext
from shvya_engage.gate import ModelGate


def _job(priority: int) -> JobContext:
    return JobContext(uuid.uuid4(), "ai.engage", priority, 1, None, None)


async def _wait_for(predicate, what: str) -> None:
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - the gate has no event to wait on
            await asyncio.sleep(0)
    assert predicate(), what


async def test_waiting_calls_are_admitted_highest_priority_first():
    """With the gate full, a reply (100) goes before a summary (90) before a P2 job (50)."""
    gate = ModelGate(1)
    order: list[int] = []
    await gate.acquire(None)

    async def call(priority: int) -> None:
        CURRENT_JOB.set(_job(priority))
        async with gate.slot(None):
            order.append(priority)

    tasks = [asyncio.create_task(call(p)) for p in (50, 90, 100)]
    await _wait_for(lambda: len(gate._waiters) == 3, "all three wait")
    gate._give_back(None)
    await asyncio.gather(*tasks)
    assert order == [100, 90, 50]


async def test_a_company_at_its_share_does_not_block_others():
    """A company using its whole share waits while another company's call goes through."""
    gate = ModelGate(10, per_company=1)
    busy, other = uuid.uuid4(), uuid.uuid4()
    await gate.acquire(busy)
    blocked = asyncio.create_task(gate.acquire(busy))
    await _wait_for(lambda: len(gate._waiters) == 1, "the second call of `busy` waits")
    await asyncio.wait_for(gate.acquire(other), 5)
    assert not blocked.done()
    gate._give_back(busy)
    await asyncio.wait_for(blocked, 5)
    assert gate.in_flight == 2


async def test_a_rate_limit_halves_the_limit_once_and_answers_raise_it():
    """A burst of 429s halves the limit once; each answer then adds one, up to the maximum."""
    gate = ModelGate(8)
    for _ in range(5):
        gate.rate_limited(0.0)
    assert int(gate.limit) == 4
    for _ in range(10):
        gate.succeeded()
    assert int(gate.limit) == 8


async def test_the_gate_stays_closed_for_retry_after():
    """After a 429 with Retry-After, no call is admitted until it has passed."""
    gate = ModelGate(4)
    closed_for = gate.rate_limited(0.2)
    assert closed_for == pytest.approx(0.2)
    waiter = asyncio.create_task(gate.acquire(None))
    await asyncio.sleep(0)
    assert not waiter.done()
    await asyncio.wait_for(waiter, 5)
    assert gate.in_flight == 1


async def test_a_cancelled_waiter_gives_nothing_away():
    """A call cancelled while waiting leaves no slot taken."""
    gate = ModelGate(1)
    await gate.acquire(None)
    waiter = asyncio.create_task(gate.acquire(None))
    await _wait_for(lambda: len(gate._waiters) == 1, "it waits")
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    gate._give_back(None)
    assert gate.in_flight == 0
