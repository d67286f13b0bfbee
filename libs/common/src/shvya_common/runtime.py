"""How a SHVYA process starts and stops: one owner for each resource, closed in reverse order.

`platform()` opens the database pool and the NATS connection, declares the streams and installs
the job bus; `run_worker()` adds a worker over the service's handlers, metrics, and a graceful
SIGTERM/SIGINT shutdown (stop fetching, finish the jobs in hand, drain NATS, close the pool).
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shvya_common import tracing
from shvya_common.bus import JobBus, Worker, install_bus
from shvya_common.bus.registry import Handler, Registration
from shvya_common.bus.topology import TopologyKeeper
from shvya_common.contracts import Topology
from shvya_common.db import create_pool, migrate
from shvya_common.metrics import record_build, start_metrics_server
from shvya_common.settings import CommonSettings

log = structlog.get_logger(__name__)

CONNECT_DEADLINE_SECONDS = 60.0


@dataclass(frozen=True)
class Platform:
    """The shared resources of one process."""

    pool: asyncpg.Pool
    # The job bus's claims, renewals, completions and publish confirmations, committed
    # asynchronously (see shvya_common.bus.ledgers for why that is safe).
    bookkeeping: asyncpg.Pool
    nc: NATS
    js: JetStreamContext
    bus: JobBus
    topology: Topology
    keeper: TopologyKeeper


async def _retry_until(what: str, connect: Callable[[], Awaitable[object]]) -> object:
    """Keep trying to reach a dependency at start-up, for when everything starts at once."""
    deadline = asyncio.get_running_loop().time() + CONNECT_DEADLINE_SECONDS
    delay = 0.2
    while True:
        try:
            return await connect()
        except Exception as err:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"could not reach {what}: {err}") from err
            log.warning("waiting_for_dependency", dependency=what, error=str(err))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _disconnected() -> None:
    log.warning("nats_disconnected")


async def _reconnected() -> None:
    log.info("nats_reconnected")


async def _nats_error(err: Exception) -> None:
    log.warning("nats_error", error=f"{type(err).__name__}: {err}")


async def _drain_or_close(nc: NATS) -> None:
    """Drain (finish in-flight messages) when connected; otherwise just close."""
    try:
        if nc.is_connected:
            await nc.drain()
            return
    except Exception as err:
        log.warning("nats_drain_failed", error=type(err).__name__)
    try:
        await nc.close()
    except (OSError, ConnectionError) as err:  # the transport was already gone
        log.warning("nats_close_failed", error=type(err).__name__)


@asynccontextmanager
async def platform(settings: CommonSettings, service: str) -> AsyncIterator[Platform]:
    async with AsyncExitStack() as stack:
        record_build(service)
        tracing.configure(service, settings.otel_exporter_otlp_endpoint)
        stack.callback(tracing.shutdown)  # last: flushes the spans of the shutdown too
        await _retry_until("PostgreSQL", lambda: migrate(settings.dsn))
        pool = await create_pool(settings.dsn, settings.db_pool_min, settings.db_pool_max)
        stack.push_async_callback(pool.close)
        bookkeeping = await create_pool(
            settings.dsn, 1, settings.db_bookkeeping_pool_max, synchronous_commit=False
        )
        stack.push_async_callback(bookkeeping.close)

        async def _connect() -> NATS:
            return await nats.connect(
                servers=settings.nats_servers,
                name=f"shvya-{service}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=3,
                disconnected_cb=_disconnected,
                reconnected_cb=_reconnected,
                error_cb=_nats_error,
            )

        nc = await _retry_until("NATS", _connect)
        assert isinstance(nc, NATS)
        stack.push_async_callback(_drain_or_close, nc)  # drained before the pool closes
        js = nc.jetstream()
        topology = Topology(settings.nats_prefix)
        keeper = TopologyKeeper(
            js,
            topology,
            duplicate_window=settings.duplicate_window_seconds,
            replicas=settings.nats_stream_replicas,
        )
        await _retry_until("JetStream", keeper.ensure)
        bus = JobBus(
            pool,
            nc,
            js,
            topology,
            service=service,
            max_attempts=settings.max_attempts,
            keeper=keeper,
            bookkeeping=bookkeeping,
        )
        bus.start()
        stack.push_async_callback(bus.close)  # confirmations flushed before NATS and the pool
        install_bus(bus)
        stack.callback(install_bus, None)
        yield Platform(pool, bookkeeping, nc, js, bus, topology, keeper)


def settle_heap() -> None:
    """Move what start-up allocated (modules, the SDKs' models, settings, pools) out of the
    garbage collector's sight: collect once, then freeze the survivors.

    They live as long as the process, yet every full collection scanned them again; under load
    that was 5-8% of engage's CPU. Objects made afterwards are collected as usual."""
    gc.collect()
    gc.freeze()


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


HandlerFactory = Callable[
    [Platform, AsyncExitStack], Awaitable[Mapping[str, Registration | Handler]]
]
Background = Callable[[Platform, asyncio.Event], Coroutine[Any, Any, None]]


async def run_worker(
    settings: CommonSettings,
    service: str,
    default_metrics_port: int,
    make_handlers: HandlerFactory,
    background: Background | None = None,
) -> None:
    """Run a worker service until SIGTERM/SIGINT."""
    async with platform(settings, service) as plat, AsyncExitStack() as stack:
        # Installed once started: a signal during start-up keeps its default (exit now).
        stopping = stop_event()
        start_metrics_server(settings.metrics_host, settings.metrics_port or default_metrics_port)
        handlers = await make_handlers(plat, stack)
        worker = None
        if handlers:
            worker = Worker(
                service=service,
                bus=plat.bus,
                nc=plat.nc,
                handlers=handlers,
                retry_schedule=settings.retry_schedule,
                concurrency=settings.worker_concurrency,
                reserved_p1=settings.p1_reserved_slots,
                low_priority_slots=settings.worker_low_priority_slots,
                ack_wait=settings.ack_wait_seconds,
                poll_seconds=settings.worker_poll_seconds,
                keeper=plat.keeper,
            )
            await worker.start()
        extra = asyncio.create_task(background(plat, stopping)) if background else None
        settle_heap()
        log.info("service_ready")
        await stopping.wait()
        log.info("service_stopping")
        if worker is not None:
            await worker.stop()
        if extra is not None:
            await extra
    log.info("service_stopped")


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a service's async main on uvloop where available."""
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
