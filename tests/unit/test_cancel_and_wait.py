"""`cancel_and_wait` stops a background loop even when the loop lost the first cancellation, as
Python 3.11's `asyncio.wait_for` can make it do; a plain cancel-and-gather waits for ever."""

from __future__ import annotations

import asyncio

import pytest

from shvya_common.tasks import cancel_and_wait


async def _loop_that_swallows_one_cancel(started: asyncio.Event) -> None:
    swallowed = False
    while True:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed = True  # what a wait_for racing its result does to the caller's cancel
            asyncio.current_task().uncancel()  # type: ignore[union-attr]


async def test_a_loop_that_swallowed_a_cancel_is_stopped() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(_loop_that_swallows_one_cancel(started))
    await started.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done  # one cancel is not enough: the naive shutdown would hang here
    await asyncio.wait_for(cancel_and_wait([task]), timeout=30)
    assert task.cancelled()


async def test_finished_and_failed_tasks_are_collected_without_raising() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fail())
    finished = asyncio.create_task(asyncio.sleep(0))
    sleeping = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0.01)
    await cancel_and_wait([failed, finished, sleeping])
    assert failed.done() and finished.done() and sleeping.cancelled()
    with pytest.raises(RuntimeError):
        failed.result()
