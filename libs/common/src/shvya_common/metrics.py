"""Prometheus metrics shared by every service, defined once so names and labels never drift.

Workers expose them with `start_metrics_server`; ingest mounts them on its own `/metrics` route.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS = Counter(
    "shvya_jobs_total",
    "Jobs finished by a worker, by task and outcome.",
    ["service", "task", "outcome"],
)
JOB_SECONDS = Histogram(
    "shvya_job_handler_seconds",
    "Time spent in a job handler.",
    ["service", "task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
JOBS_ENQUEUED = Counter(
    "shvya_jobs_enqueued_total", "Jobs published to JetStream.", ["service", "task"]
)
CONSUMER_PENDING = Gauge(
    "shvya_consumer_pending",
    "Messages waiting in a JetStream consumer (num_pending + redeliveries not yet acked).",
    ["stream", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "shvya_consumer_ack_pending",
    "Messages delivered to a consumer and not yet acknowledged.",
    ["stream", "consumer"],
)
HTTP_SECONDS = Histogram(
    "shvya_http_request_seconds",
    "Ingest HTTP request latency.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
TIMERS_FIRED = Counter("shvya_timers_fired_total", "Timers fired by the scheduler.", ["kind"])


def start_metrics_server(host: str, port: int) -> None:
    """Serve /metrics for a worker process on its own port."""
    start_http_server(port, addr=host)
