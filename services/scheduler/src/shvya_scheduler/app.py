"""Wires the scheduler: its tasks (the registry), and as background work the timer loop, the
event feed's reactors, the sweeps, the outbox's relay and reconciler, the queue counters' fold
and retention, the platform-wide gauges (dead letters, paused channels) and the recurring
schedules."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import structlog
from prometheus_client import Gauge

from shvya_common.bus import Registration
from shvya_common.bus.relay import Relay
from shvya_common.logging import configure_logging
from shvya_common.metrics import CHANNEL_PAUSED, DLQ_DEPTH
from shvya_common.retention import RetentionConfig, compact_counters, retention_pass
from shvya_common.runtime import Platform, run, run_worker
from shvya_scheduler import tasks
from shvya_scheduler.feed import feed_loop
from shvya_scheduler.handlers import timer_loop
from shvya_scheduler.registry import Deps, registry
from shvya_scheduler.repository import TimerRepository
from shvya_scheduler.schedules import schedule_loop
from shvya_scheduler.settings import SchedulerSettings
from shvya_scheduler.sweeps import sweep_loop

SERVICE = "scheduler"
METRICS_PORT = 9103
GAUGE_SECONDS = 15.0
log = structlog.get_logger(__name__)


def _set_all(gauge: Gauge, values: dict[str, int], seen: set[str]) -> None:
    """Set each label's value; a label seen before and absent now goes back to 0."""
    for label in seen - values.keys():
        gauge.labels(label).set(0)
    for label, n in values.items():
        gauge.labels(label).set(n)
    # In place: `seen |= values.keys()` would bind a new set here and the caller's never grew.
    seen.update(values)


async def gauges(plat: Platform, stopping: asyncio.Event) -> None:
    """Keep `shvya_dlq_depth{task}` and `shvya_channel_paused{channel}` current for dashboards
    and alerts (one process computes them for the whole platform). A channel is paused while a
    company's pause is in force (`channel_pauses`) or, for whatsapp_web, while one of its
    accounts is (`whatsapp_web_accounts`)."""
    dead: set[str] = set()
    paused: set[str] = set()
    while not stopping.is_set():
        try:
            _set_all(DLQ_DEPTH, await TimerRepository.dlq_depth(plat.pool), dead)
            pauses = await TimerRepository.paused_channels(plat.pool)
            _set_all(CHANNEL_PAUSED, {c: min(n, 1) for c, n in pauses.items()}, paused)
        except Exception as err:
            log.debug("gauges_failed", error=type(err).__name__)
        try:
            await asyncio.wait_for(stopping.wait(), GAUGE_SECONDS)
        except TimeoutError:
            pass


async def upkeep(
    plat: Platform,
    stopping: asyncio.Event,
    counters_every: float,
    retention_every: float,
    config: RetentionConfig,
) -> None:
    """Fold the queue counters every `counters_every`; run retention every `retention_every`.
    An outage only skips a round."""
    last_retention = 0.0
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        try:
            await compact_counters(plat.pool)
            if loop.time() - last_retention >= retention_every:
                last_retention = loop.time()
                await retention_pass(plat.pool, config)
        except Exception as err:
            log.warning("upkeep_failed", error=f"{type(err).__name__}: {err}"[:300])
        try:
            await asyncio.wait_for(stopping.wait(), counters_every)
        except TimeoutError:
            pass


def main() -> None:
    settings = SchedulerSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)

    tasks.load()

    async def handlers(plat: Platform, stack: AsyncExitStack) -> dict[str, Registration]:
        return registry.bind(deps=Deps(bus=plat.bus, settings=settings))

    async def background(plat: Platform, stopping: asyncio.Event) -> None:
        await asyncio.gather(
            timer_loop(plat.bus, stopping, settings.tick_seconds, settings.timer_batch),
            feed_loop(plat.bus, stopping, settings.feed_tick_seconds, settings.feed_batch),
            sweep_loop(plat.bus, stopping, settings.sweep_config()),
            Relay(plat.bus, settings.relay_config()).run(stopping),
            gauges(plat, stopping),
            schedule_loop(plat.bus, stopping, settings.schedule_config()),
            upkeep(
                plat,
                stopping,
                settings.counters_interval_seconds,
                settings.retention_interval_seconds,
                settings.retention_config(),
            ),
        )

    run(lambda: run_worker(settings, SERVICE, METRICS_PORT, handlers, background))
