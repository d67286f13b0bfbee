"""The inbox: a company's conversations by last activity, what is unread, what needs a person,
and what the composer may send.

    GET  /v1/conversations?view=all|unread|needs_human&channel=&stage_id=&q=&cursor=&limit=
    POST /v1/leads/{id}/seen        an agent has read the conversation (unread drops to 0)
    GET  /v1/leads/{id}/composer    the channel a reply goes on, whether free text may go
                                    (WhatsApp's 24-hour window) and the approved templates

A conversation needs a person when an agent has taken it over, when a reply could not go
(held, dead-lettered, or its outcome unknown) since an agent last looked, or when the lead's
last message has waited UNANSWERED_SECONDS with no answer. "Seen" is shared by the company's
agents, as a conversation's "agent last seen" is in Chatwoot.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shvya_ingest import examples as ex
from shvya_ingest.auth import AgentCompany
from shvya_ingest.v1.common import (
    ERRORS,
    V1,
    Cursor,
    IngestDep,
    LeadId,
    Limit,
    Page,
    StageFilter,
    decode_cursor,
    encode_cursor,
    limit_param,
    not_found,
)

router = APIRouter(prefix="/v1", dependencies=V1, tags=["inbox"], responses=ERRORS)

UNANSWERED_SECONDS = 120
WHATSAPP_WINDOW = timedelta(hours=24)
# Outbound statuses an agent should look at: the send did not (or may not) reach the lead.
ATTENTION_STATUSES = ["held", "dlq", "unknown"]

View = Literal["all", "unread", "needs_human"]
Channel = Literal["whatsapp_cloud", "whatsapp_web", "email", "log"]


class LastMessage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "direction": "inbound",
                "channel": "whatsapp_cloud",
                "preview": "Can you send me the quote for the 6 kW system?",
                "status": "received",
                "delivery_status": None,
                "created_at": ex.UPDATED,
            }
        )
    )

    direction: Literal["inbound", "outbound"]
    channel: str
    preview: str = Field(description="The first 160 characters.")
    status: str
    delivery_status: str | None
    created_at: datetime


class ConversationOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "lead_id": ex.LEAD_ID,
                **ex.CONTACT_FIELDS,
                "stage_id": ex.STAGE_IDS[1],
                "stage": "Qualified",
                "channels": ["whatsapp_cloud"],
                "last_activity_at": ex.UPDATED,
                "last_message": ex.example_of(LastMessage),
                "unread": 2,
                "handoff_at": None,
                "handoff_by": None,
                "needs_human": False,
                "needs_human_reason": None,
            }
        )
    )

    lead_id: uuid.UUID
    contact_name: str | None
    phone_e164: str | None
    email: str | None
    stage_id: uuid.UUID | None
    stage: str | None
    channels: list[str]
    last_activity_at: datetime
    last_message: LastMessage | None
    unread: int = Field(description="Inbound messages since an agent last looked (at most 99).")
    handoff_at: datetime | None
    handoff_by: str | None
    needs_human: bool
    needs_human_reason: Literal["handoff", "held", "dlq", "unknown", "unanswered"] | None


_CONVERSATIONS = """
SELECT l.id, l.contact_name, l.phone_e164, l.email, l.stage_id, s.name AS stage,
       l.handoff_at, l.handoff_by, a.last_activity,
       coalesce((SELECT array_agg(DISTINCT c.channel) FROM lead_contacts c
                 WHERE c.lead_id = l.id), '{}') AS channels,
       m.direction, m.channel, left(m.body, 160) AS preview, m.status, m.delivery_status,
       m.created_at AS message_at,
       (SELECT count(*) FROM (SELECT 1 FROM messages i WHERE i.lead_id = l.id
            AND i.direction = 'inbound'
            AND i.created_at > coalesce(l.agent_seen_at, '-infinity') LIMIT 99) u) AS unread,
       CASE WHEN l.handoff_at IS NOT NULL THEN 'handoff'
            WHEN p.status IS NOT NULL THEN p.status
            WHEN l.last_inbound_at > coalesce(l.last_outbound_at, '-infinity')
             AND l.last_inbound_at < now() - make_interval(secs => $8) THEN 'unanswered'
       END AS reason
FROM leads l
LEFT JOIN stages s ON s.id = l.stage_id
CROSS JOIN LATERAL (SELECT greatest(l.last_inbound_at, l.last_outbound_at) AS last_activity) a
LEFT JOIN LATERAL (SELECT direction, channel, body, status, delivery_status, created_at
                   FROM messages WHERE lead_id = l.id ORDER BY created_at DESC LIMIT 1) m ON true
LEFT JOIN LATERAL (SELECT status FROM messages WHERE lead_id = l.id AND direction = 'outbound'
                   AND status = ANY($9::text[])
                   AND created_at > coalesce(l.agent_seen_at, '-infinity')
                   ORDER BY created_at DESC LIMIT 1) p ON true
WHERE l.company_id = $1 AND a.last_activity IS NOT NULL
  AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM lead_contacts c
                                   WHERE c.lead_id = l.id AND c.channel = $2))
  AND ($3::uuid IS NULL OR l.stage_id = $3)
  AND ($4::text IS NULL OR (coalesce(l.contact_name, '') || ' ' || coalesce(l.phone_e164, '')
       || ' ' || coalesce(l.email, '')) ILIKE '%' || $4 || '%')
  AND ($5::timestamptz IS NULL OR (a.last_activity, l.id) < ($5, $6::uuid))
"""


def _conversation(row: Any) -> ConversationOut:
    last = None
    if row["direction"] is not None:
        last = LastMessage(
            direction=row["direction"],
            channel=row["channel"],
            preview=row["preview"],
            status=row["status"],
            delivery_status=row["delivery_status"],
            created_at=row["message_at"],
        )
    return ConversationOut(
        lead_id=row["id"],
        contact_name=row["contact_name"],
        phone_e164=row["phone_e164"],
        email=row["email"],
        stage_id=row["stage_id"],
        stage=row["stage"],
        channels=list(row["channels"]),
        last_activity_at=row["last_activity"],
        last_message=last,
        unread=row["unread"],
        handoff_at=row["handoff_at"],
        handoff_by=row["handoff_by"],
        needs_human=row["reason"] is not None,
        needs_human_reason=row["reason"],
    )


@router.get("/conversations", response_model=Page[ConversationOut])
async def list_conversations(
    request: Request,
    company_id: AgentCompany,
    ingest: IngestDep,
    view: Annotated[
        View,
        Query(
            description="`all`; `unread`: inbound messages since an agent last looked;"
            " `needs_human`: taken over, a reply that could not go, or the lead unanswered."
        ),
    ] = "all",
    channel: Annotated[
        Channel | None, Query(description="Only leads with a contact on this channel.")
    ] = None,
    stage_id: StageFilter = None,
    q: Annotated[str | None, Query(max_length=200, description="Name, phone or email.")] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[ConversationOut]:
    """Conversations, most recent activity first."""
    limit = limit_param(request, limit)
    after = decode_cursor(cursor)
    having = {
        "all": "",
        "unread": " WHERE unread > 0",
        "needs_human": " WHERE reason IS NOT NULL",
    }[view]
    rows = await ingest.plat.pool.fetch(
        f"SELECT * FROM ({_CONVERSATIONS}) c{having} ORDER BY last_activity DESC, id DESC LIMIT $7",
        company_id,
        channel,
        stage_id,
        q.replace("%", r"\%").replace("_", r"\_") if q else None,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
        UNANSWERED_SECONDS,
        ATTENTION_STATUSES,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["last_activity"], rows[-1]["id"]) if more else None
    return Page(items=[_conversation(r) for r in rows], next_cursor=next_cursor)


class SeenOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples({"lead_id": ex.LEAD_ID, "agent_seen_at": ex.UPDATED})
    )

    lead_id: uuid.UUID
    agent_seen_at: datetime


@router.post("/leads/{lead_id}/seen", response_model=SeenOut)
async def mark_seen(lead_id: LeadId, company_id: AgentCompany, ingest: IngestDep) -> SeenOut:
    """The conversation was read: its unread count drops to 0 for the company's agents."""
    seen = await ingest.plat.pool.fetchval(
        "UPDATE leads SET agent_seen_at = now() WHERE id = $1 AND company_id = $2"
        " RETURNING agent_seen_at",
        lead_id,
        company_id,
    )
    if seen is None:
        raise not_found("lead", lead_id)
    return SeenOut(lead_id=lead_id, agent_seen_at=seen)


class ComposerTemplate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.TEMPLATE_ID,
                "name": "quote_ready",
                "language": "en",
                "body": "Hi {{1}}, your quote is ready: {{2}}",
                "parameters": 2,
            }
        )
    )

    id: uuid.UUID
    name: str
    language: str
    body: str
    parameters: int = Field(description="How many {{n}} placeholders the body has.")


class ComposerOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "lead_id": ex.LEAD_ID,
                "channel": "whatsapp_cloud",
                "free_text": False,
                "window_closes_at": None,
                "reason": "the 24-hour window closed: only approved templates may be sent",
                "templates": [ex.example_of(ComposerTemplate)],
                "handoff_at": ex.UPDATED,
                "handoff_by": "user:rita@acme.example",
            }
        )
    )

    lead_id: uuid.UUID
    channel: str = Field(description="Where a reply goes: the channel the lead last wrote on.")
    free_text: bool = Field(description="Free text may be sent now (else templates only).")
    window_closes_at: datetime | None = Field(
        description="WhatsApp Cloud: when the 24-hour customer-service window closes."
    )
    reason: str | None = Field(description="Why free text may not be sent.")
    templates: list[ComposerTemplate] = Field(description="Approved templates of the channel.")
    handoff_at: datetime | None
    handoff_by: str | None


@router.get("/leads/{lead_id}/composer", response_model=ComposerOut)
async def composer(lead_id: LeadId, company_id: AgentCompany, ingest: IngestDep) -> ComposerOut:
    """What a manual reply may be right now; the send itself goes through dispatch's policies."""
    pool = ingest.plat.pool
    lead = await pool.fetchrow(
        "SELECT l.phone_e164, l.email, l.handoff_at, l.handoff_by,"
        " (SELECT m.channel FROM messages m WHERE m.lead_id = l.id AND m.direction = 'inbound'"
        "  ORDER BY m.created_at DESC LIMIT 1) AS last_channel,"
        " (SELECT max(m.created_at) FROM messages m WHERE m.lead_id = l.id"
        "  AND m.direction = 'inbound' AND m.channel = 'whatsapp_cloud') AS last_whatsapp"
        " FROM leads l WHERE l.id = $1 AND l.company_id = $2",
        lead_id,
        company_id,
    )
    if lead is None:
        raise not_found("lead", lead_id)
    # The same choice as POST /v1/leads/{id}/messages makes without a channel.
    channel = lead["last_channel"] or (
        "email" if lead["email"] and not lead["phone_e164"] else "whatsapp_cloud"
    )
    closes = None
    free_text, reason = True, None
    if channel == "whatsapp_cloud":
        last = lead["last_whatsapp"]
        closes = last + WHATSAPP_WINDOW if last is not None else None
        now = datetime.now(tz=closes.tzinfo) if closes is not None else None
        if closes is None or now is None or closes <= now:
            free_text = False
            reason = "outside WhatsApp's 24-hour window: only approved templates may be sent"
    rows = await pool.fetch(
        "SELECT id, name, language, body FROM templates WHERE company_id = $1 AND channel = $2"
        " AND status = 'approved' ORDER BY name, language",
        company_id,
        channel,
    )
    templates = [
        ComposerTemplate(**dict(r), parameters=len(set(re.findall(r"{{\s*(\w+)\s*}}", r["body"]))))
        for r in rows
    ]
    return ComposerOut(
        lead_id=lead_id,
        channel=channel,
        free_text=free_text,
        window_closes_at=closes,
        reason=reason,
        templates=templates,
        handoff_at=lead["handoff_at"],
        handoff_by=lead["handoff_by"],
    )
