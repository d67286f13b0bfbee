"""Outbound webhooks' fan-out: each public event becomes one delivery per subscribed endpoint.

The reactor runs once per event in the feed's unit of work, so the deliveries and their
`webhook.reminder` jobs commit together with the event leaving the feed, and are published
after COMMIT. An endpoint gets an event at most once (`webhook_deliveries` is unique by
endpoint and event; each job's idempotency key names its delivery). Disabled endpoints get
nothing; an endpoint is never told about its own disabling, so two failing endpoints
subscribed to each other's `webhook.endpoint_disabled` cannot feed each other.
"""

from __future__ import annotations

import uuid

import structlog

from shvya_common.bus import NewJob, Unit
from shvya_common.contracts import WebhookParams
from shvya_common.contracts.events import PUBLIC_EVENTS, EventType
from shvya_common.webhooks.repository import WebhookRepository
from shvya_scheduler.feed import FeedEvent, reacts_to

log = structlog.get_logger(__name__)

TASK = "webhook.reminder"


@reacts_to(*sorted(PUBLIC_EVENTS))
async def fan_out(unit: Unit, event: FeedEvent) -> None:
    if event.company_id is None:
        return
    about = None
    if event.type == EventType.WEBHOOK_ENDPOINT_DISABLED:
        about = uuid.UUID(str(event.payload["endpoint_id"]))
    created = await WebhookRepository.fan_out(
        unit.conn, event.company_id, event.id, event.type, except_endpoint=about
    )
    if not created:
        return
    await unit.enqueue_jobs(
        [
            NewJob(
                TASK,
                WebhookParams(kind="delivery", delivery_id=delivery_id).model_dump(mode="json"),
                idempotency_key=f"webhook:{delivery_id}:0",
                company_id=event.company_id,
                lead_id=event.lead_id,
                id=job_id,
            )
            for delivery_id, job_id in created
        ]
    )
    log.info("webhook_fanned_out", event_id=str(event.id), type=event.type, deliveries=len(created))
