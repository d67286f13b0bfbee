"""How many model calls may be in flight: a limit for the provider, one per company, and
back-pressure when the provider says it has had enough.

A model call is pure waiting, so engage holds as many as the provider allows rather than a
fixed handful. The gate admits a call while fewer than the provider's current limit are in
flight (and fewer than the company's share, when one is set); a waiting call is admitted
highest priority first, so a reply is never queued behind summaries.

The provider's limit adapts (additive increase, multiplicative decrease, as TCP does): each
answer raises it by one up to `MODEL_CONCURRENCY`; a 429 halves it and closes the gate until
the provider's `Retry-After` has passed (or a growing backoff when it names none). Calls wait
at the gate in their job's slot, heartbeating, rather than failing: a slow or rate-limited
model makes jobs wait in JetStream, and never turns into timeouts or a storm of dead letters.
Once the worker's slots are all taken by waiting calls it stops pulling.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog

from shvya_common.bus import CURRENT_JOB
from shvya_engage.metrics import MODEL_GATE_LIMIT, MODEL_IN_FLIGHT, MODEL_WAITING

log = structlog.get_logger(__name__)

# Without a Retry-After, a 429 closes the gate for this long, doubling while they keep coming.
DEFAULT_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
# The calls in flight when the provider pushed back were admitted under the old limit: their
# 429s and timeouts, arriving together, halve the limit once, not once each.
DECREASE_EVERY_SECONDS = 1.0


@dataclass(order=True)
class _Waiter:
    rank: tuple[int, int]
    company_id: uuid.UUID | None = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class ModelGate:
    """Admission to the model provider; one per provider (engage has one)."""

    def __init__(self, limit: int, *, per_company: int = 0, floor: int = 1) -> None:
        if limit < 1:
            raise ValueError("the model gate needs a limit of at least 1")
        self.max_limit = limit
        self.limit = float(limit)
        self.floor = max(1, min(floor, limit))
        self.per_company = per_company
        self.in_flight = 0
        self.peak_in_flight = 0
        self._by_company: Counter[uuid.UUID | None] = Counter()
        self._waiters: list[_Waiter] = []
        self._order = itertools.count()
        self._closed_until = 0.0
        self._backoff = DEFAULT_BACKOFF_SECONDS
        self._reopen: asyncio.TimerHandle | None = None
        self._last_decrease = -DECREASE_EVERY_SECONDS
        MODEL_GATE_LIMIT.set(limit)

    # --- admission ---

    def _admits(self, company_id: uuid.UUID | None) -> bool:
        if time.monotonic() < self._closed_until:
            return False
        if self.in_flight >= int(self.limit):
            return False
        return not (self.per_company and self._by_company[company_id] >= self.per_company)

    def _take(self, company_id: uuid.UUID | None) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self._by_company[company_id] += 1
        MODEL_IN_FLIGHT.set(self.in_flight)

    def _give_back(self, company_id: uuid.UUID | None) -> None:
        self.in_flight -= 1
        self._by_company[company_id] -= 1
        if self._by_company[company_id] <= 0:
            del self._by_company[company_id]
        MODEL_IN_FLIGHT.set(self.in_flight)
        self._wake()

    def _wake(self) -> None:
        """Admit waiters, highest priority first, while there is room. A waiter whose company
        is at its share is passed over (and keeps its place) so it never blocks the others."""
        if not self._waiters or time.monotonic() < self._closed_until:
            return
        kept: list[_Waiter] = []
        while self._waiters and self.in_flight < int(self.limit):
            waiter = heapq.heappop(self._waiters)
            if waiter.future.done():
                continue
            if self.per_company and self._by_company[waiter.company_id] >= self.per_company:
                kept.append(waiter)
                continue
            self._take(waiter.company_id)
            waiter.future.set_result(None)
        for waiter in kept:
            heapq.heappush(self._waiters, waiter)
        MODEL_WAITING.set(len(self._waiters))

    @asynccontextmanager
    async def slot(self, company_id: uuid.UUID | None) -> AsyncIterator[None]:
        """Hold one in-flight model call for the body of the block."""
        await self.acquire(company_id)
        try:
            yield
        finally:
            self._give_back(company_id)

    async def acquire(self, company_id: uuid.UUID | None) -> None:
        if not self._waiters and self._admits(company_id):
            self._take(company_id)
            return
        job = CURRENT_JOB.get()
        priority = job.priority if job is not None else 0
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, _Waiter((-priority, next(self._order)), company_id, future))
        MODEL_WAITING.set(len(self._waiters))
        self._wake()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._give_back(company_id)  # admitted just as we were cancelled
            raise

    # --- what the provider said ---

    def succeeded(self) -> None:
        """An answer: the provider has room for about one more call than before."""
        if self.limit < self.max_limit:
            self.limit = min(float(self.max_limit), self.limit + 1.0)
            MODEL_GATE_LIMIT.set(int(self.limit))
        self._backoff = DEFAULT_BACKOFF_SECONDS
        self._wake()

    def slowed(self) -> None:
        """A call timed out: fewer at once."""
        self._decrease()

    def rate_limited(self, retry_after: float | None) -> float:
        """A 429: fewer calls at once, and none until the provider's Retry-After has passed.
        Returns how long the gate stays closed."""
        if retry_after is None or retry_after <= 0:
            wait = self._backoff
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
        else:
            wait = min(retry_after, MAX_BACKOFF_SECONDS)
        now = time.monotonic()
        if now + wait > self._closed_until:
            self._closed_until = now + wait
            if self._reopen is not None:
                self._reopen.cancel()
            self._reopen = asyncio.get_running_loop().call_later(wait, self._wake)
            log.warning("model_rate_limited", closed_for=round(wait, 3), limit=int(self.limit))
        self._decrease()
        return max(self._closed_until - now, 0.0)

    def _decrease(self) -> None:
        now = time.monotonic()
        if now - self._last_decrease < DECREASE_EVERY_SECONDS:
            return
        self._last_decrease = now
        self.limit = max(float(self.floor), self.limit / 2)
        MODEL_GATE_LIMIT.set(int(self.limit))
