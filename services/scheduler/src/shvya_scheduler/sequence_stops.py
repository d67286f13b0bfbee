"""The event feed's reactors for sequences: a reply stops (or pauses) a lead's enrolments, an
opt-out or suppression stops them, and an opt-out on one channel suppresses marketing on all of
the lead's addresses when the company says so.

- `message.received`: the lead wrote, on any channel. Each of its active enrolments enrolled
  (or resumed) before the message stops, or pauses when its sequence has `on_reply: pause`.
  An opt-out keyword is left to `lead.opted_out`; mail that answers itself (`meta.auto_reply`)
  is not a reply.
- `lead.opted_out` (a STOP keyword), `lead.unsubscribed` (an email unsubscribe link),
  `lead.suppressed` (a provider's opt-out, e.g. WhatsApp 131050) and `email.hard_bounce`: the
  lead's active and paused enrolments stop.
- One opt-out across channels: for the first three, unless the company's setting
  `optout_across_channels` is false (it is on by default), every address of the lead (its phone,
  its email, each `lead_contacts` address) gets a suppression of scope `marketing` on channel
  `all`, so a STOP on WhatsApp also ends email marketing to the same person. Replies still go.

Each reactor runs inside the feed's unit of work, so what it changes commits with the event
leaving the feed. The step handler makes the same checks when it runs, for the event it races.
"""

from __future__ import annotations

import uuid

from shvya_common.bus import Unit
from shvya_common.contracts.events import EventType
from shvya_common.events import record_event
from shvya_common.sequences import enrolments
from shvya_scheduler.feed import FeedEvent, reacts_to

ACROSS_CHANNELS_SETTING = "optout_across_channels"
ACROSS_CHANNELS_REASON = "optout_across_channels"
OPT_OUTS = {
    EventType.LEAD_OPTED_OUT.value: "opted_out",
    EventType.LEAD_UNSUBSCRIBED.value: "unsubscribed",
    EventType.LEAD_SUPPRESSED.value: "suppressed",
    EventType.LEAD_MARKETING_OPT_OUT.value: "opted_out",
}
STOP_REASONS = {**OPT_OUTS, EventType.EMAIL_HARD_BOUNCE.value: "bounced"}

_SUPPRESS_ALL_ADDRESSES = """
WITH addresses AS (
    SELECT DISTINCT a.address FROM leads l
    CROSS JOIN LATERAL (SELECT l.phone_e164 UNION SELECT l.email
                        UNION SELECT c.address FROM lead_contacts c WHERE c.lead_id = l.id)
        AS a(address)
    WHERE l.id = $2 AND l.company_id = $1 AND a.address IS NOT NULL
)
INSERT INTO suppressions (company_id, channel, address, scope, reason)
SELECT $1, 'all', address, 'marketing', $3 FROM addresses
ON CONFLICT (company_id, channel, address, scope) DO NOTHING
RETURNING address
"""


@reacts_to(EventType.MESSAGE_RECEIVED)
async def stop_on_reply(unit: Unit, event: FeedEvent) -> None:
    if event.lead_id is None or event.payload.get("optout"):
        return
    message_id = event.payload.get("message_id")
    if not message_id:
        return
    message = await unit.conn.fetchrow(
        "SELECT created_at, direction, channel, meta ? 'auto_reply' AS auto_reply"
        " FROM messages WHERE id = $1",
        uuid.UUID(str(message_id)),
    )
    if message is None or message["direction"] != "inbound" or message["auto_reply"]:
        return
    to_stop: list[uuid.UUID] = []
    to_pause: list[uuid.UUID] = []
    for row in await enrolments.live_for_lead(unit.conn, event.lead_id):
        since = row["resumed_at"] or row["enrolled_at"]
        if row["status"] != "active" or message["created_at"] <= since:
            continue
        (to_pause if row["on_reply"] == "pause" else to_stop).append(row["id"])
    detail = {"message_id": str(message_id), "channel": message["channel"]}
    if to_stop:
        await enrolments.stop(unit, to_stop, "replied", detail)
    if to_pause:
        await enrolments.pause(unit, to_pause, "replied", detail)


@reacts_to(
    EventType.LEAD_OPTED_OUT,
    EventType.LEAD_UNSUBSCRIBED,
    EventType.LEAD_SUPPRESSED,
    EventType.LEAD_MARKETING_OPT_OUT,
    EventType.EMAIL_HARD_BOUNCE,
)
async def stop_on_optout(unit: Unit, event: FeedEvent) -> None:
    if event.lead_id is None or event.company_id is None:
        return
    reason = STOP_REASONS[event.type]
    live = await enrolments.live_for_lead(unit.conn, event.lead_id)
    detail = {"event": event.type, "channel": event.payload.get("channel")}
    if live:
        await enrolments.stop(unit, [r["id"] for r in live], reason, detail)
    own = event.payload.get("reason") == ACROSS_CHANNELS_REASON
    if event.type in OPT_OUTS and not own:
        await suppress_across_channels(unit, event.company_id, event.lead_id, event)


async def across_channels(unit: Unit, company_id: uuid.UUID) -> bool:
    """The company's `optout_across_channels` setting (on unless set to false)."""
    value = await unit.conn.fetchval(
        "SELECT settings->$2 FROM companies WHERE id = $1", company_id, ACROSS_CHANNELS_SETTING
    )
    return value is not False


async def suppress_across_channels(
    unit: Unit, company_id: uuid.UUID, lead_id: uuid.UUID, origin: FeedEvent
) -> list[str]:
    """Suppress marketing to every address of the lead; returns the addresses newly added."""
    if not await across_channels(unit, company_id):
        return []
    rows = await unit.conn.fetch(
        _SUPPRESS_ALL_ADDRESSES, company_id, lead_id, ACROSS_CHANNELS_REASON
    )
    added = [r["address"] for r in rows]
    if added:
        await record_event(
            unit.conn,
            company_id,
            lead_id,
            EventType.LEAD_SUPPRESSED,
            {
                "channel": "all",
                "scope": "marketing",
                "reason": ACROSS_CHANNELS_REASON,
                "addresses": len(added),
                "origin": origin.type,
                "origin_channel": origin.payload.get("channel"),
            },
        )
    return added
