"""Stopping background tasks for certain.

`task.cancel()` asks once, and on Python 3.11 the request can be lost: `asyncio.wait_for` (which
nats-py's request and publish-ack use) returns the inner result instead of raising when the
result and the cancellation arrive in the same loop iteration (CPython gh-86296, fixed in 3.12).
A loop that then goes back to `asyncio.sleep` runs for ever, and whoever awaits it hangs, as a
worker's shutdown once did behind its consumer watcher. `cancel_and_wait` asks again until each
task has finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

NUDGE_SECONDS = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel `tasks` and return once every one has finished, cancelling again any that swallowed
    the request. Their results and exceptions are discarded, as `gather(return_exceptions=True)`
    would. A cancellation of the caller itself still propagates."""
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=NUDGE_SECONDS)
    for task in every:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
