"""What `webhook.reminder` does: deliver one webhook, or fire one reminder.

**A delivery** (one row of `webhook_deliveries`, written by the scheduler's fan-out) is POSTed
to its endpoint, signed per Standard Webhooks with the `standardwebhooks` library:
`webhook-id` (the event's id, the same on every attempt), `webhook-timestamp` (this attempt's
Unix time) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`; during a
secret rotation's overlap one per secret, space-separated). Every attempt is logged with its
status code, latency, error and the address connected. A failed attempt raises
`DeliveryFailed`, so the worker retries it on `RETRY` (exponential, with jitter, over about a
day); when the last attempt fails the delivery is `failed`, its endpoint `failing`, and after
`WEBHOOK_DISABLE_AFTER_FAILURES` failed deliveries in a row `disabled`, with a
`webhook.endpoint_disabled` event. The job itself then completes (the outcome is the
delivery's, in the log), so a customer's broken endpoint never fills the dead-letter queue.

A delivery whose row names another job (a manual redelivery took over) or is no longer
pending is left alone; one for a disabled endpoint is `skipped`.

**A reminder** is marked fired and records `reminder.due` in one transaction, once, at the
version it was scheduled with; the event feed then fans it out like any event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from standardwebhooks.webhooks import Webhook

from shvya_common.bus import JobContext, RetryPolicy
from shvya_common.contracts import WebhookParams
from shvya_common.contracts.webhooks import EndpointStatus, webhook_body
from shvya_common.crypto import SecretBox, SecretsError
from shvya_common.errors import PermanentError, RetryableError
from shvya_common.metrics import WEBHOOK_ATTEMPTS, WEBHOOK_SECONDS
from shvya_common.webhooks.keys import secret_context
from shvya_common.webhooks.repository import (
    Delivery,
    ReminderRepository,
    WebhookRepository,
)
from shvya_dispatch.webhooks.sender import WebhookSender

log = structlog.get_logger(__name__)

# Seconds before each retry: 5 s, 5 min, 30 min, 2 h, 5 h, 8 h, 8 h — eight attempts over about
# 23.6 hours, each delay ±20 % so endpoints that come back are not hit by every retry at once.
RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 28800.0, 28800.0)
RETRY = RetryPolicy(schedule=RETRY_SCHEDULE, jitter=0.2, non_retryable=(SecretsError,))


class DeliveryFailed(RetryableError):
    """An attempt did not get a 2xx; retried on the schedule."""


@dataclass(frozen=True)
class Webhooks:
    """What webhook.reminder needs: the pool, the guarded sender, the keyring, the threshold."""

    pool: asyncpg.Pool
    sender: WebhookSender
    box: SecretBox | None
    disable_after: int


def sign(msg_id: str, timestamp: datetime, body: str, secrets: list[str]) -> str:
    """The `webhook-signature` header: one `v1,<signature>` per secret, space-separated."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets)


def signing_secrets(box: SecretBox | None, delivery: Delivery) -> list[str]:
    if box is None:
        raise PermanentError(
            "SECRETS_KEYS is not set in dispatch, so webhook secrets cannot be read; set the"
            " same keyring as ingest's, then redeliver"
        )
    secrets = [box.decrypt(delivery.secret, secret_context(delivery.endpoint_id))]
    if delivery.previous_secret is not None:
        context = secret_context(delivery.endpoint_id, "previous_secret")
        secrets.append(box.decrypt(delivery.previous_secret, context))
    return secrets


async def handle(params: WebhookParams, job: JobContext, hooks: Webhooks) -> dict[str, Any]:
    if params.kind == "reminder":
        assert params.reminder_id is not None
        return await fire_reminder(hooks, params.reminder_id, params.version)
    assert params.delivery_id is not None
    return await deliver(hooks, params.delivery_id, job)


async def fire_reminder(hooks: Webhooks, reminder_id: Any, version: int) -> dict[str, Any]:
    async with hooks.pool.acquire() as conn, conn.transaction():
        fired = await ReminderRepository.fire_reminder(conn, reminder_id, version)
    if fired is None:
        log.info("reminder_not_fired", reminder_id=str(reminder_id), version=version)
        return {"status": "not scheduled"}
    log.info("reminder_fired", reminder_id=str(reminder_id))
    return {"status": "fired", "reminder_id": str(reminder_id)}


async def deliver(hooks: Webhooks, delivery_id: Any, job: JobContext) -> dict[str, Any]:
    delivery = await WebhookRepository.delivery(hooks.pool, delivery_id)
    if delivery is None:
        return {"status": "gone"}
    if delivery.job_id != job.job_id:
        return {"status": "superseded"}
    if delivery.status != "pending":
        return {"status": delivery.status}
    if delivery.endpoint_status == EndpointStatus.DISABLED:
        await WebhookRepository.skip(hooks.pool, delivery, job.job_id, "the endpoint is disabled")
        return {"status": "skipped"}

    body = webhook_body(
        delivery.event_type,
        delivery.event_created_at,
        delivery.company_id,
        delivery.lead_id,
        delivery.event_payload,
    )
    msg_id = str(delivery.event_id)
    now = datetime.now(UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign(msg_id, now, body, signing_secrets(hooks.box, delivery)),
    }
    result = await hooks.sender.post(delivery.url, body.encode(), headers)
    outcome = "succeeded" if result.ok else "failed"
    WEBHOOK_ATTEMPTS.labels(outcome).inc()
    if result.latency_ms is not None:
        WEBHOOK_SECONDS.labels(outcome).observe(result.latency_ms / 1000)

    last = job.attempt >= job.max_attempts
    endpoint_status: str | None = None
    async with hooks.pool.acquire() as conn, conn.transaction():
        number = await WebhookRepository.record_attempt(
            conn, delivery, job.job_id, job.attempt, result
        )
        if number is None:
            return {"status": "superseded"}
        if result.ok:
            await WebhookRepository.succeed(conn, delivery, job.job_id)
        elif last:
            endpoint_status = await WebhookRepository.fail(
                conn,
                delivery,
                job.job_id,
                result.error or "failed",
                disable_after=hooks.disable_after,
            )
    fields = {
        "delivery_id": str(delivery.id),
        "endpoint_id": str(delivery.endpoint_id),
        "event_type": delivery.event_type,
        # The delivery's attempt over its whole life; `attempt` (bound) is the job's.
        "delivery_attempt": number,
        "status_code": result.status_code,
        "latency_ms": result.latency_ms,
    }
    if result.ok:
        log.info("webhook_delivered", **fields)
        return {"status": "succeeded", "attempt": number, "status_code": result.status_code}
    if not last:
        log.info("webhook_attempt_failed", error=result.error, **fields)
        raise DeliveryFailed(result.error or "failed")
    log.warning(
        "webhook_delivery_failed", error=result.error, endpoint_status=endpoint_status, **fields
    )
    return {"status": "failed", "attempt": number, "error": result.error}
