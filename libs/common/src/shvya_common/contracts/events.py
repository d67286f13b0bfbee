"""The types of the audit trail (`events.type`), named once.

Every event a service writes is one of these; `shvya_common.events.record_event` refuses any
other, so a consumer of the trail (reports, outbound webhooks) can rely on the list. Every event
also enters the event feed (migration 0009), which the scheduler's reactors consume: sequences
stop when a lead replies, outbound webhooks fan out. `PUBLIC_EVENTS` are the types an outbound
webhook endpoint may subscribe to.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_SENT = "message.sent"
    MESSAGE_SEND_AMBIGUOUS = "message.send_ambiguous"
    MESSAGE_SUPPRESSED = "message.suppressed"
    MESSAGE_HELD = "message.held"
    # Dispatch parked a send until later (quiet hours, pacing, a pause; payload: message_id,
    # channel, reason, deferred_until); written when the deferral is new or its reason changed.
    MESSAGE_DEFERRED = "message.deferred"
    MESSAGE_DEAD_LETTERED = "message.dead_lettered"
    MESSAGE_CONVERTED_TO_TEMPLATE = "message.converted_to_template"
    MESSAGE_PROVIDER_SENT = "message.provider_sent"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_READ = "message.read"
    MESSAGE_DELIVERY_FAILED = "message.delivery_failed"
    LEAD_OPTED_OUT = "lead.opted_out"
    LEAD_UNSUBSCRIBED = "lead.unsubscribed"
    # WhatsApp's user_preferences "stop" / "resume" for marketing messages.
    LEAD_MARKETING_OPT_OUT = "lead.marketing_opt_out"
    LEAD_MARKETING_RESUMED = "lead.marketing_resumed"
    LEAD_SUPPRESSED = "lead.suppressed"
    EMAIL_HARD_BOUNCE = "email.hard_bounce"
    CHANNEL_PAUSED = "channel.paused"
    CHANNEL_RESUMED = "channel.resumed"
    AI_REPLY_GENERATED = "ai.reply_generated"
    LEAD_CREATED = "lead.created"
    LEAD_STAGE_CHANGED = "lead.stage_changed"
    LEAD_SUMMARY_UPDATED = "lead.summary_updated"
    FOLLOWUP_BUMPUP_SENT = "followup.bumpup_sent"
    JOB_DEAD_LETTERED = "job.dead_lettered"
    AUDIT = "audit.action"
    LEAD_ERASED = "lead.erased"
    LEAD_MERGED = "lead.merged"
    LEAD_HANDOFF_STARTED = "lead.handoff_started"
    LEAD_HANDOFF_ENDED = "lead.handoff_ended"
    # A reminder's time came (reminders table); endpoints subscribed to it are told.
    REMINDER_DUE = "reminder.due"
    # An outbound webhook endpoint was disabled after a run of failed deliveries.
    WEBHOOK_ENDPOINT_DISABLED = "webhook.endpoint_disabled"
    # Written by ingest's tracking routes (payload: message_id, machine, agent, user_agent[, url]).
    EMAIL_OPENED = "email.opened"
    EMAIL_CLICKED = "email.clicked"
    SEQUENCE_ENROLLED = "sequence.enrolled"
    SEQUENCE_STEP_EXECUTED = "sequence.step_executed"
    SEQUENCE_PAUSED = "sequence.paused"
    SEQUENCE_RESUMED = "sequence.resumed"
    SEQUENCE_COMPLETED = "sequence.completed"
    SEQUENCE_STOPPED = "sequence.stopped"
    # A webhook change for a number no company owns, or not signed by its owner's secret.
    WHATSAPP_ENTRY_SKIPPED = "whatsapp.entry_skipped"
    CAMPAIGN_STARTED = "campaign.started"
    CAMPAIGN_PAUSED = "campaign.paused"
    CAMPAIGN_RESUMED = "campaign.resumed"
    CAMPAIGN_COMPLETED = "campaign.completed"
    CAMPAIGN_CANCELLED = "campaign.cancelled"
    # WhatsApp Web accounts (issue 12): the health probe saw a new state; the account was paused
    # (restriction, timelock, ban, logout) or resumed; the phone has not been used for long
    # enough that WhatsApp will soon log the linked device out.
    WHATSAPP_WEB_ACCOUNT_STATE = "whatsapp_web.account_state"
    WHATSAPP_WEB_ACCOUNT_PAUSED = "whatsapp_web.account_paused"
    WHATSAPP_WEB_ACCOUNT_RESUMED = "whatsapp_web.account_resumed"
    WHATSAPP_WEB_INACTIVITY_REMINDER = "whatsapp_web.inactivity_reminder"
    # A send moved to another channel (a paused WhatsApp Web account's send to WhatsApp Cloud).
    MESSAGE_REROUTED = "message.rerouted"
    # Something a WhatsApp Web account reported that nothing acts on (an unknown kind).
    WHATSAPP_WEB_ITEM_RECORDED = "whatsapp_web.item_recorded"


# What an outbound webhook endpoint may subscribe to (the rest are internal bookkeeping).
PUBLIC_EVENTS: frozenset[EventType] = frozenset(
    {
        EventType.MESSAGE_RECEIVED,
        EventType.MESSAGE_SENT,
        EventType.MESSAGE_DELIVERED,
        EventType.MESSAGE_READ,
        EventType.MESSAGE_DELIVERY_FAILED,
        EventType.MESSAGE_DEAD_LETTERED,
        EventType.MESSAGE_SEND_AMBIGUOUS,
        EventType.LEAD_CREATED,
        EventType.LEAD_STAGE_CHANGED,
        EventType.LEAD_SUMMARY_UPDATED,
        EventType.LEAD_OPTED_OUT,
        EventType.LEAD_ERASED,
        EventType.LEAD_MERGED,
        EventType.LEAD_HANDOFF_STARTED,
        EventType.LEAD_HANDOFF_ENDED,
        EventType.LEAD_UNSUBSCRIBED,
        EventType.CHANNEL_PAUSED,
        EventType.CHANNEL_RESUMED,
        EventType.REMINDER_DUE,
        EventType.WEBHOOK_ENDPOINT_DISABLED,
        EventType.SEQUENCE_ENROLLED,
        EventType.SEQUENCE_STEP_EXECUTED,
        EventType.SEQUENCE_PAUSED,
        EventType.SEQUENCE_RESUMED,
        EventType.SEQUENCE_COMPLETED,
        EventType.SEQUENCE_STOPPED,
        EventType.CAMPAIGN_STARTED,
        EventType.CAMPAIGN_COMPLETED,
        EventType.WHATSAPP_WEB_ACCOUNT_STATE,
        EventType.WHATSAPP_WEB_ACCOUNT_PAUSED,
        EventType.WHATSAPP_WEB_ACCOUNT_RESUMED,
        EventType.WHATSAPP_WEB_INACTIVITY_REMINDER,
        EventType.MESSAGE_REROUTED,
    }
)
