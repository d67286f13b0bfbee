"""The job bus: a transactional outbox over PostgreSQL and JetStream. Rows are committed first
and published after COMMIT; the relay and reconciler republish what a publish lost; the worker
runs handlers with fenced claims, retries, dead letters and replay."""

from shvya_common.bus.jobs import JobBus, QueueStats, Replayed, enqueue_job, install_bus
from shvya_common.bus.outbox import Along, EnqueuedJob, NewJob, Unit
from shvya_common.bus.registry import Registration, Registry, RetryPolicy
from shvya_common.bus.topology import ensure_consumers, ensure_streams
from shvya_common.bus.worker import CURRENT_JOB, Handler, JobContext, Worker

__all__ = [
    "CURRENT_JOB",
    "Along",
    "EnqueuedJob",
    "Handler",
    "JobBus",
    "JobContext",
    "NewJob",
    "QueueStats",
    "Registration",
    "Registry",
    "Replayed",
    "RetryPolicy",
    "Unit",
    "Worker",
    "enqueue_job",
    "ensure_consumers",
    "ensure_streams",
    "install_bus",
]
