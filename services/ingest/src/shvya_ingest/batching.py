"""Coalesces concurrent single-message filings into shared transactions.

Round trips, not SQL, dominate ingest's cost: a message filed alone costs BEGIN, the filing
statement and COMMIT, plus its JetStream publish. Under load many requests wait at once, so
the flusher takes everything queued while the previous batch was in flight (up to `max_batch`)
and files it with `InboundFiler.file`: one transaction and one statement per company, channel
and identity; the jobs' publishes go out after COMMIT without being waited for (the job bus's
outbox: what a publish could lose, the relay republishes). At low load a batch is a single
request and nothing waits on a timer, so latency is unchanged.

One flusher, not several: with the publish no longer in its cycle, a flusher is busy only
while its transaction runs, and a second one only splits the queue into smaller batches whose
transactions contend for the same rows and the same 2 cores. Measured with ingest alone under
wrk (performance.md, "What committing first cost"): two flushers answering at COMMIT ~3,700
req/s, one ~4,300, for one lead; for a new lead per request one flusher answering at COMMIT
3,251 against two waiting for the acks 2,641.

A batch shares its fate: if its transaction fails (the database down), every request in it gets
the same error, and none of them was filed. NATS being down does not fail it: the rows are
committed and the relay publishes them when NATS is back.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Literal

from shvya_common.contracts.jobs import Channel
from shvya_common.tasks import cancel_and_wait
from shvya_ingest.inbound import Accepted, InboundFiler
from shvya_ingest.repository import CompanyRoute, InboundRow

Identity = Literal["phone", "email"]


@dataclass
class _Pending:
    route: CompanyRoute
    identity: Identity
    channel: Channel
    row: InboundRow
    future: asyncio.Future[Accepted]


class FilingBatcher:
    def __init__(self, filer: InboundFiler, *, max_batch: int = 128) -> None:
        self.filer = filer
        self.max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._flusher())

    async def file_one(
        self, route: CompanyRoute, identity: Identity, channel: Channel, row: InboundRow
    ) -> Accepted:
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(route, identity, channel, row, future))
        self._wake.set()
        return await future

    async def close(self) -> None:
        await cancel_and_wait([self._task])
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("ingest is shutting down"))

    async def _flusher(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
            await self._file(batch)

    async def _file(self, batch: list[_Pending]) -> None:
        groups: dict[tuple[object, ...], list[_Pending]] = {}
        for pending in batch:
            if pending.future.done():  # the request was cancelled (client gone, deadline)
                continue
            key = (pending.route.company_id, pending.identity, pending.channel)
            groups.setdefault(key, []).append(pending)
        if not groups:
            return
        # Each group is its own transaction, and they run at once: different companies share
        # no row, and two channels of one company that reach the same lead lock it in turn, in
        # the one order every filing takes (by address). The first runs in the flusher's own
        # task: a task for a batch's only group, the common case, cost ~7% of throughput.
        first, *rest = groups.values()
        others = [asyncio.create_task(self._file_group(items)) for items in rest]
        await self._file_group(first)
        await asyncio.gather(*others)

    async def _file_group(self, items: list[_Pending]) -> None:
        first = items[0]
        try:
            results = await self.filer.file(
                first.route,
                identity=first.identity,
                channel=first.channel,
                rows=[p.row for p in items],
            )
        except Exception as err:
            for p in items:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        for p, result in zip(items, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)
