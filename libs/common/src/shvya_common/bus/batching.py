"""One statement for many jobs: the writes that jobs in hand make at about the same time (claims,
completions) are coalesced into one statement per ledger.

There is no timer: the first submission starts a flush at once, and whatever is submitted while
a flush runs goes together in the next one. A lone job therefore waits for nothing, and under
load a hundred claims cost one round trip instead of a hundred (ingest's request batching works
the same way). Flushes run one at a time per coalescer, which also keeps a process's multi-row
writes from taking row locks against each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R")


class Coalescer(Generic[K, I, R]):
    """`await submit(key, item)` returns `flush(key, items)[i]` for the item's batch."""

    def __init__(
        self, flush: Callable[[K, list[I]], Awaitable[Sequence[R]]], *, max_batch: int = 256
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._pending: dict[K, list[tuple[I, asyncio.Future[R]]]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, key: K, item: I) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain(), name="bus-coalescer")
        return await future

    async def _drain(self) -> None:
        while self._pending:
            key = next(iter(self._pending))
            entries = self._pending.pop(key)
            batch, rest = entries[: self._max_batch], entries[self._max_batch :]
            if rest:
                self._pending[key] = rest
            live = [(item, fut) for item, fut in batch if not fut.done()]
            if not live:
                continue
            try:
                results = await self._flush(key, [item for item, _ in live])
            except BaseException as err:  # every waiter of the batch gets the failure
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(err)
                if isinstance(err, asyncio.CancelledError):
                    raise
                continue
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def close(self) -> None:
        if self._runner is not None and not self._runner.done():
            await asyncio.gather(self._runner, return_exceptions=True)
