"""Wires the scheduler: the timer loop and the sweeps as the service's background work."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from shvya_common.bus.worker import Handler
from shvya_common.logging import configure_logging
from shvya_common.runtime import Platform, run, run_worker
from shvya_scheduler.handlers import timer_loop
from shvya_scheduler.settings import SchedulerSettings
from shvya_scheduler.sweeps import sweep_loop

SERVICE = "scheduler"
METRICS_PORT = 9103


def main() -> None:
    settings = SchedulerSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)

    async def no_handlers(plat: Platform, stack: AsyncExitStack) -> dict[str, Handler]:
        return {}

    async def timers(plat: Platform, stopping: asyncio.Event) -> None:
        await asyncio.gather(
            timer_loop(plat.bus, stopping, settings.tick_seconds, settings.timer_batch),
            sweep_loop(plat.bus, stopping, settings.sweep_config()),
        )

    run(lambda: run_worker(settings, SERVICE, METRICS_PORT, no_handlers, timers))
