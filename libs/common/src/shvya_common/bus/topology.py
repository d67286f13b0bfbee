"""Streams and durable consumers, declared in one place and created idempotently at start-up, and
again whenever they are found missing (a NATS that lost its data comes back empty).

`<PREFIX>_JOBS` is a work-queue stream: a job's message is removed once acknowledged. Each
service owns one durable pull consumer per priority level, filtered to the subjects of its own
tasks, so consumers never overlap (which work-queue streams require). `<PREFIX>_DLQ` keeps dead
letters for inspection with the `nats` CLI; the database is what replay reads.

JetStream settings are explicit: file storage, the duplicate window (a republish of the same
`Nats-Msg-Id` inside it is dropped), and the replica count (`NATS_STREAM_REPLICAS`: 1 on a
single server, 3 on a cluster, so a stream survives the loss of its leader). A single server
fsyncs on its own schedule (`sync_interval`, two minutes by default), so it can lose its last
acknowledged messages on power loss; the reconciler (`shvya_common.bus.relay`) republishes
every row whose message is gone, so that loss delays work but never loses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from shvya_common.contracts.subjects import PRIORITY_LEVELS, Topology

log = structlog.get_logger(__name__)

DLQ_MAX_AGE_SECONDS = 30 * 24 * 3600


async def _upsert_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:
            pass  # created by a process that started at the same moment
    await js.update_stream(config)


def stream_configs(
    topology: Topology, duplicate_window: float = 600.0, replicas: int = 1
) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=topology.jobs_stream,
            subjects=[topology.jobs_subjects],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=duplicate_window,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=topology.dlq_stream,
            subjects=[topology.dlq_subjects],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=DLQ_MAX_AGE_SECONDS,
            duplicate_window=duplicate_window,
            num_replicas=replicas,
        ),
    ]


async def ensure_streams(
    js: JetStreamContext, topology: Topology, duplicate_window: float = 600.0, replicas: int = 1
) -> None:
    """Create or update the jobs and dead-letter streams."""
    for config in stream_configs(topology, duplicate_window, replicas):
        await _upsert_stream(js, config)


def consumer_configs(
    topology: Topology, service: str, tasks: Iterable[str], ack_wait: float
) -> list[ConsumerConfig]:
    """One durable pull consumer per priority level, highest first."""
    tasks = sorted(tasks)
    configs = []
    for level in PRIORITY_LEVELS:
        name = topology.consumer_name(service, level)
        configs.append(
            ConsumerConfig(
                durable_name=name,
                name=name,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=ack_wait,
                # Unlimited on the server: attempts are counted in the database, where an
                # outage (which is not an attempt) can be told apart from a failure.
                max_deliver=-1,
                max_ack_pending=-1,
                filter_subjects=[topology.task_filter(t, level) for t in tasks],
            )
        )
    return configs


async def ensure_consumers(
    js: JetStreamContext, topology: Topology, service: str, tasks: Iterable[str], ack_wait: float
) -> list[ConsumerConfig]:
    configs = consumer_configs(topology, service, tasks, ack_wait)
    for config in configs:
        # add_consumer with the same config is idempotent; a changed config is updated in place.
        await js.add_consumer(topology.jobs_stream, config)
    return configs


class TopologyKeeper:
    """Re-creates the streams (and this process's consumers) when NATS has lost them.

    Called by the publisher when a publish finds no stream, and by the worker when a consumer is
    missing; concurrent callers share one attempt.
    """

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        *,
        duplicate_window: float,
        replicas: int,
    ) -> None:
        self.js = js
        self.topology = topology
        self.duplicate_window = duplicate_window
        self.replicas = replicas
        self.consumers: list[tuple[str, list[str], float]] = []
        self._lock = asyncio.Lock()

    def add_consumers(self, service: str, tasks: Iterable[str], ack_wait: float) -> None:
        self.consumers.append((service, sorted(tasks), ack_wait))

    async def ensure(self) -> None:
        await ensure_streams(self.js, self.topology, self.duplicate_window, self.replicas)
        for service, tasks, ack_wait in self.consumers:
            await ensure_consumers(self.js, self.topology, service, tasks, ack_wait)

    async def repair(self, why: str) -> None:
        if self._lock.locked():
            async with self._lock:
                return  # someone else just repaired it
        async with self._lock:
            log.warning("jetstream_topology_repair", reason=why)
            await self.ensure()
