"""The types of the audit trail (`events.type`), named once.

Every event a service writes is one of these; `shvya_common.events.record_event` refuses any
other, so a consumer of the trail (reports, outbound webhooks) can rely on the list.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_SENT = "message.sent"
    MESSAGE_SEND_AMBIGUOUS = "message.send_ambiguous"
    MESSAGE_SUPPRESSED = "message.suppressed"
    MESSAGE_HELD = "message.held"
    MESSAGE_DEAD_LETTERED = "message.dead_lettered"
    MESSAGE_CONVERTED_TO_TEMPLATE = "message.converted_to_template"
    MESSAGE_PROVIDER_SENT = "message.provider_sent"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_READ = "message.read"
    MESSAGE_DELIVERY_FAILED = "message.delivery_failed"
    LEAD_OPTED_OUT = "lead.opted_out"
    LEAD_UNSUBSCRIBED = "lead.unsubscribed"
    LEAD_SUPPRESSED = "lead.suppressed"
    EMAIL_HARD_BOUNCE = "email.hard_bounce"
    CHANNEL_PAUSED = "channel.paused"
    CHANNEL_RESUMED = "channel.resumed"
    AI_REPLY_GENERATED = "ai.reply_generated"
    AI_SUMMARY_GENERATED = "ai.summary_generated"
    FOLLOWUP_BUMPUP_SENT = "followup.bumpup_sent"
    JOB_DEAD_LETTERED = "job.dead_lettered"
