"""The job bus: JetStream streams and consumers, enqueueing, the worker loop, retries, dead
letters and replay. The jobs table is the durable record of every job's state."""

from shvya_common.bus.jobs import EnqueuedJob, JobBus, QueueStats, enqueue_job, install_bus
from shvya_common.bus.topology import ensure_consumers, ensure_streams
from shvya_common.bus.worker import Handler, JobContext, Worker

__all__ = [
    "EnqueuedJob",
    "Handler",
    "JobBus",
    "JobContext",
    "QueueStats",
    "Worker",
    "enqueue_job",
    "ensure_consumers",
    "ensure_streams",
    "install_bus",
]
