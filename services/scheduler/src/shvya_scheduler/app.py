"""Wires the scheduler: the timer loop, the sweeps, and the outbox's relay and reconciler, as
the service's background work, plus the dead-letter depth gauge."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import structlog

from shvya_common.bus import Registration
from shvya_common.bus.relay import Relay
from shvya_common.logging import configure_logging
from shvya_common.metrics import DLQ_DEPTH
from shvya_common.runtime import Platform, run, run_worker
from shvya_scheduler.handlers import timer_loop
from shvya_scheduler.repository import TimerRepository
from shvya_scheduler.settings import SchedulerSettings
from shvya_scheduler.sweeps import sweep_loop

SERVICE = "scheduler"
METRICS_PORT = 9103
GAUGE_SECONDS = 15.0
log = structlog.get_logger(__name__)


async def dlq_gauge(plat: Platform, stopping: asyncio.Event) -> None:
    """Keep `shvya_dlq_depth{task}` current for dashboards and alerts."""
    seen: set[str] = set()
    while not stopping.is_set():
        try:
            depth = await TimerRepository.dlq_depth(plat.pool)
            for task in seen - depth.keys():
                DLQ_DEPTH.labels(task).set(0)
            for task, n in depth.items():
                DLQ_DEPTH.labels(task).set(n)
            seen |= depth.keys()
        except Exception as err:
            log.debug("dlq_gauge_failed", error=type(err).__name__)
        try:
            await asyncio.wait_for(stopping.wait(), GAUGE_SECONDS)
        except TimeoutError:
            pass


def main() -> None:
    settings = SchedulerSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)

    async def no_handlers(plat: Platform, stack: AsyncExitStack) -> dict[str, Registration]:
        return {}

    async def background(plat: Platform, stopping: asyncio.Event) -> None:
        await asyncio.gather(
            timer_loop(plat.bus, stopping, settings.tick_seconds, settings.timer_batch),
            sweep_loop(plat.bus, stopping, settings.sweep_config()),
            Relay(plat.bus, settings.relay_config()).run(stopping),
            dlq_gauge(plat, stopping),
        )

    run(lambda: run_worker(settings, SERVICE, METRICS_PORT, no_handlers, background))
