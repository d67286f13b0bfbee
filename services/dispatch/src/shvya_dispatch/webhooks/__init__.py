"""Outbound webhooks and reminders in dispatch: the SSRF-guarded sender (`sender`) and what the
`webhook.reminder` task does with a delivery or a reminder (`delivery`)."""

from shvya_dispatch.webhooks.delivery import RETRY, DeliveryFailed, Webhooks, handle, sign
from shvya_dispatch.webhooks.sender import WebhookSender, webhook_client

__all__ = [
    "RETRY",
    "DeliveryFailed",
    "WebhookSender",
    "Webhooks",
    "handle",
    "sign",
    "webhook_client",
]
