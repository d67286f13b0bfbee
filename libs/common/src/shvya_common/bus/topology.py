"""Streams and durable consumers, declared in one place and created idempotently at start-up.

`<PREFIX>_JOBS` is a work-queue stream: a job is removed once acknowledged. Each service owns
one durable pull consumer per priority level, filtered to the subjects of its own tasks, so
consumers never overlap (which work-queue streams require). `<PREFIX>_DLQ` keeps dead letters
for inspection with the `nats` CLI; the jobs table is what replay reads.
"""

from __future__ import annotations

from collections.abc import Iterable

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


async def ensure_streams(
    js: JetStreamContext, topology: Topology, duplicate_window: float = 600.0
) -> None:
    """Create or update the jobs and dead-letter streams."""
    await _upsert_stream(
        js,
        StreamConfig(
            name=topology.jobs_stream,
            subjects=[topology.jobs_subjects],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=duplicate_window,
        ),
    )
    await _upsert_stream(
        js,
        StreamConfig(
            name=topology.dlq_stream,
            subjects=[topology.dlq_subjects],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=DLQ_MAX_AGE_SECONDS,
            duplicate_window=duplicate_window,
        ),
    )


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
                # Unlimited on the server: the worker counts deliveries itself and dead-letters,
                # so a message that kills its worker every time still ends in the DLQ.
                max_deliver=-1,
                max_ack_pending=-1,
                filter_subjects=[topology.job_subject(t, level) for t in tasks],
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
