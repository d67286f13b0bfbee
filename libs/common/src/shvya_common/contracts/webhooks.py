"""Outbound webhooks and reminders: their statuses and the body every endpoint receives.

Endpoints (`webhook_endpoints.status`)::

    active ──a delivery fails after all its attempts──▶ failing ──a success──▶ active
       │                                                   │
       └──── WEBHOOK_DISABLE_AFTER_FAILURES in a row, or by hand ┴──▶ disabled
    disabled ──enabled by hand──▶ active (its failures forgotten)

Deliveries (`webhook_deliveries.status`), one per (endpoint, event)::

    pending ──2xx──▶ succeeded
       │  └─ non-2xx, timeout, refused address, redirect: retried on the schedule
       ├──last attempt fails──▶ failed
       └──endpoint disabled──▶ skipped          any of them ──redeliver──▶ pending

Reminders (`reminders.status`): scheduled ──its time──▶ fired (records `reminder.due`), or
scheduled ──▶ cancelled.

The body follows the Standard Webhooks payload shape: `{"type", "timestamp", "data"}`, where
`data` is the event's payload with its `company_id` and `lead_id`. `webhook-id` is the event's
id, the same on every attempt and redelivery, so a receiver can drop duplicates by it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID


class EndpointStatus(StrEnum):
    ACTIVE = "active"
    FAILING = "failing"
    DISABLED = "disabled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class ReminderStatus(StrEnum):
    SCHEDULED = "scheduled"
    FIRED = "fired"
    CANCELLED = "cancelled"


def webhook_body(
    event_type: str,
    created_at: datetime,
    company_id: UUID | None,
    lead_id: UUID | None,
    payload: dict[str, Any],
) -> str:
    """The exact JSON text POSTed for an event: the same bytes on every attempt."""
    data = {
        **payload,
        "company_id": str(company_id) if company_id else None,
        "lead_id": str(lead_id) if lead_id else None,
    }
    stamp = created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    body = {"type": event_type, "timestamp": stamp, "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str)
