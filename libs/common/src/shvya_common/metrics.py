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
DLQ_DEPTH = Gauge(
    "shvya_dlq_depth",
    "Dead letters waiting for an operator, by task (dispatch.send counts dead-lettered sends).",
    ["task"],
)
OUTBOX_PUBLISHED = Counter(
    "shvya_outbox_published_total",
    "Committed job and send rows published to JetStream, by ledger and by who published them"
    " (inline: the writer right after COMMIT; relay: an unconfirmed publish; reconciler: a row"
    " whose message was missing from JetStream).",
    ["ledger", "source"],
)
OUTBOX_UNPUBLISHED = Gauge(
    "shvya_outbox_unpublished",
    "Committed rows whose publish JetStream has not confirmed yet, by ledger.",
    ["ledger"],
)
RECONCILER_REPUBLISHED = Counter(
    "shvya_reconciler_republished_total",
    "Rows stuck past the horizon with no message in JetStream, republished, by ledger and status.",
    ["ledger", "status"],
)
SENDS = Counter(
    "shvya_sends_total",
    "Send attempts finished by dispatch, by channel and outcome (sent, logged, suppressed, held,"
    " unknown, retried, dead_lettered, deferred).",
    ["channel", "outcome"],
)
POLICY_DEFERRALS = Counter(
    "shvya_policy_deferrals_total",
    "Sends deferred by a channel policy, by channel and reason (pacing, quiet_hours, paused,"
    " daily_cap, window).",
    ["channel", "reason"],
)
CHANNEL_PAUSED = Gauge(
    "shvya_channel_paused",
    "1 while a channel is paused for at least one company (provider refused the sender;"
    " whatsapp_web: an account restricted, timelocked, banned or logged out).",
    ["channel"],
)
WEBHOOK_ITEMS = Counter(
    "shvya_webhook_items_total",
    "Items of provider webhooks (messages, statuses, account fields), by channel, kind and"
    " outcome (filed, duplicate, applied, recorded, failed, ignored).",
    ["channel", "kind", "outcome"],
)
MEDIA_DOWNLOADS = Counter(
    "shvya_media_downloads_total",
    "Received attachments downloaded from a provider, by channel and outcome (stored, rejected,"
    " failed).",
    ["channel", "outcome"],
)
TEMPLATE_SYNCS = Counter(
    "shvya_template_syncs_total",
    "Template syncs with a provider, by channel and outcome.",
    ["channel", "outcome"],
)
LLM_SECONDS = Histogram(
    "shvya_llm_request_seconds",
    "Latency of model calls, by task and outcome.",
    ["task", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)
WEBHOOK_ATTEMPTS = Counter(
    "shvya_webhook_attempts_total",
    "Outbound webhook delivery attempts, by outcome (succeeded, failed).",
    ["outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "shvya_webhook_attempt_seconds",
    "Time from a webhook attempt's start to its endpoint's answer, by outcome.",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BUILD_INFO = Gauge(
    "shvya_build_info", "Always 1; labels name the running build.", ["service", "version"]
)


def record_build(service: str) -> None:
    """Set `shvya_build_info{service, version}` to 1 for this process."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("shvya-common")
    except PackageNotFoundError:
        number = "unknown"
    BUILD_INFO.labels(service, number).set(1)


def start_metrics_server(host: str, port: int) -> None:
    """Serve /metrics for a worker process on its own port."""
    start_http_server(port, addr=host)


# WhatsApp Web accounts (issue 12), exported by the dispatch replica that drives each account.
WHATSAPP_WEB_ACCOUNT_STATE = Gauge(
    "shvya_whatsapp_web_account_state",
    "1 for the state each WhatsApp Web account's last health probe saw, 0 for the others.",
    ["account", "state"],
)
WHATSAPP_WEB_STATE_CHANGES = Counter(
    "shvya_whatsapp_web_state_changes_total",
    "Changes of a WhatsApp Web account's state seen by the health probe, by the new state.",
    ["state"],
)
WHATSAPP_WEB_PHONE_IDLE_DAYS = Gauge(
    "shvya_whatsapp_web_phone_idle_days",
    "Days since the phone of a WhatsApp Web account was last seen in use (WhatsApp logs linked"
    " devices out after 14).",
    ["account"],
)
WHATSAPP_WEB_INBOUND = Counter(
    "shvya_whatsapp_web_inbound_total",
    "What WhatsApp Web accounts received, by kind and outcome (queued, skipped, failed).",
    ["kind", "outcome"],
)
