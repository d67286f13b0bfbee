"""`whatsapp_web.inbound`: what a linked WhatsApp Web account received, filed by ingest through
the path every inbound message takes.

Dispatch's account supervisor writes one job per thing the page saw (the bus's outbox,
idempotent by WhatsApp's own id); ingest runs them in a small worker beside its HTTP server:

    message   a lead's text, a media caption, a reply → `InboundFiler.file`, the same unit of
              work as /inbound-message and the WhatsApp Cloud webhook: the lead, the message
              (unique by WhatsApp's id, so a message seen twice is filed once), its event and
              its ai.engage job; an opt-out word suppresses the sender and asks for the one
              confirmation instead. The quoted message's id is kept as `meta.context_id`.
    reaction  attached to the message it reacts to (`message_reactions`)
    edit / revoke   the original's text replaced (kept as a revision) / marked deleted; an
              edit of an answered message is answered again when the company says so
              (`whatsapp_edits`, the same `answer_edit` as WhatsApp Cloud's)
    ack       delivery and read acknowledgements of our messages, applied as the Cloud
              webhook's statuses are (`provider_statuses`, only forwards); an acknowledgement
              of a send recorded 'unknown' confirms it ('sent'), and one that came while the
              send was still unrecorded is found by dispatch's record of it (`SendLedger.
              record_unknown`), which then writes 'sent'

A message named in a chat WhatsApp addresses by the lead's privacy id (`<id>@lid`: a quoted
message, a reaction's, edit's or deletion's target, an acknowledged id) is matched in both forms
of its id, the privacy id's and the number's (`id_forms`, through the page's lid mapping), so it
finds our message sent by number and the lead's filed before the chat moved.

Anything else, or an item that cannot be read, is kept as a `whatsapp_web.item_recorded` event
and the job completes: a bad item is never retried and never blocks the others (each is its own
job). A database outage fails the job, which the bus retries.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shvya_common.bus import JobContext, Registry
from shvya_common.bus.ledgers import SendLedger
from shvya_common.contracts import WhatsAppWebInboundParams
from shvya_common.contracts.events import EventType
from shvya_common.events import record_event
from shvya_common.metrics import WEBHOOK_ITEMS
from shvya_ingest.api import Ingest
from shvya_ingest.meta_items import Edit, Reaction, Revoke, Sender, Where
from shvya_ingest.meta_payload import StatusReport
from shvya_ingest.phone import normalise_phone
from shvya_ingest.repository import Identity, InboundRow
from shvya_ingest.statuses import apply_statuses
from shvya_ingest.whatsapp_repository import (
    answer_edit,
    apply_edit,
    apply_reaction,
    apply_revoke,
)

log = structlog.get_logger(__name__)
registry = Registry("ingest")

CHANNEL: Final = "whatsapp_web"
NOWHERE = Where(phone_number_id=None, waba_id=None)
# wa-js's ack values: -1 failed, 1 the server has it, 2 delivered, 3 read, 4 played.
ACK_STATUS = {-1: "failed", 1: "sent", 2: "delivered", 3: "read", 4: "read", 5: "read"}
MEDIA_WORDS = {
    "image": "Image",
    "video": "Video",
    "audio": "Audio message",
    "ptt": "Voice message",
    "document": "Document",
    "sticker": "Sticker",
    "location": "Location",
    "vcard": "Contact card",
    "multi_vcard": "Contact cards",
}


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Quoted(_Item):
    id: str = Field(min_length=1, max_length=256)
    participant: str | None = None


class WebMessage(_Item):
    id: str = Field(min_length=1, max_length=256)
    chat: str = Field(min_length=1, max_length=128)
    phone: str | None = Field(None, max_length=128)
    type: str = "chat"
    body: str | None = None
    caption: str | None = None
    filename: str | None = Field(None, max_length=500)
    mimetype: str | None = Field(None, max_length=200)
    t: int | None = None
    notifyName: str | None = Field(None, max_length=200)
    quoted: Quoted | None = None


class WebReaction(_Item):
    id: str = Field(min_length=1, max_length=256)
    msgId: str = Field(min_length=1, max_length=256)
    emoji: str = ""
    sender: str | None = None
    phone: str | None = None
    chatPhone: str | None = None
    t: int | None = None


class WebAck(_Item):
    ack: int
    chat: str | None = None
    phone: str | None = None
    ids: list[str] = Field(max_length=1000)


class WebEdit(_Item):
    id: str = Field(min_length=1, max_length=256)
    editId: str | None = Field(None, max_length=256)
    chat: str | None = None
    phone: str | None = None
    body: str | None = None
    t: int | None = None


class WebRevoke(_Item):
    id: str | None = None
    refId: str = Field(min_length=1, max_length=256)
    from_: str | None = Field(None, alias="from")
    phone: str | None = None


def _at(t: int | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t else None


def _phone(wid: str | None) -> str | None:
    """+<digits> from a phone-number wid (`919812345678@c.us`); None for anything else."""
    if not wid or not wid.endswith("@c.us"):
        return None
    try:
        return normalise_phone("+" + wid.split("@", 1)[0])
    except ValueError:
        return None


def id_forms(wa_id: str, chat_phone: str | None) -> list[str]:
    """A message's id in each form its chat may be named by. WhatsApp names a message by its
    chat, who sent it and its own (stanza) id: `true_<chat>_3EB0...`. A chat it addresses by
    the lead's privacy id (`<id>@lid`) gives `true_<id>@lid_3EB0...` for a message we sent,
    and stored, as `true_<digits>@c.us_3EB0...` (we send by number), or that the lead sent
    before the chat moved: with the chat's number (the page's lid mapping) both are tried."""
    parts = wa_id.split("_", 2)
    if len(parts) != 3 or not parts[1].endswith("@lid") or _phone(chat_phone) is None:
        return [wa_id]
    fromme, _chat, stanza = parts
    return [wa_id, f"{fromme}_{chat_phone}_{stanza}"]


async def _named(
    ingest: Ingest, company_id: uuid.UUID, wa_id: str, chat_phone: str | None
) -> list[str]:
    """The id a filed or sent message carries for `wa_id` (any of its forms), else every form
    (what is not stored yet may be stored under either)."""
    forms = id_forms(wa_id, chat_phone)
    if len(forms) == 1:
        return forms
    stored: str | None = await ingest.plat.pool.fetchval(
        "SELECT provider_message_id FROM messages WHERE company_id = $1 AND channel = $2"
        " AND provider_message_id = ANY($3::text[]) ORDER BY direction LIMIT 1",
        company_id,
        CHANNEL,
        forms,
    )
    return [stored] if stored is not None else forms


def _text(msg: WebMessage) -> tuple[str, dict[str, Any]]:
    """What the message says (a media message by its caption, labelled) and its meta."""
    meta: dict[str, Any] = {"whatsapp_type": msg.type}
    if msg.type in ("chat", "text"):
        return msg.body or "", meta
    word = MEDIA_WORDS.get(msg.type)
    if word is None:
        return f"[The customer sent a {msg.type} message]", meta
    meta["media"] = {
        k: v
        for k, v in (("kind", msg.type), ("filename", msg.filename), ("mime_type", msg.mimetype))
        if v
    }
    details = [d for d in (msg.filename, msg.mimetype) if d]
    label = f"[{word} attached" + (f": {', '.join(details)}" if details else "") + "]"
    return (f"{label} {msg.caption}" if msg.caption else label), meta


async def _keep(ingest: Ingest, params: WhatsAppWebInboundParams, reason: str) -> dict[str, Any]:
    WEBHOOK_ITEMS.labels(CHANNEL, params.kind[:40], "recorded").inc()
    await record_event(
        ingest.plat.pool,
        params.company_id,
        None,
        EventType.WHATSAPP_WEB_ITEM_RECORDED,
        {"account": params.account, "kind": params.kind, "reason": reason, "item": params.item},
    )
    return {"status": "recorded", "reason": reason}


@registry.task("whatsapp_web.inbound")
async def handle_web_inbound(
    params: WhatsAppWebInboundParams, job: JobContext, ingest: Ingest
) -> dict[str, Any]:
    try:
        if params.kind == "message":
            return await _message(ingest, params, WebMessage.model_validate(params.item))
        if params.kind == "reaction":
            return await _reaction(ingest, params, WebReaction.model_validate(params.item))
        if params.kind == "ack":
            return await _ack(ingest, params, WebAck.model_validate(params.item))
        if params.kind == "edit":
            return await _edit(ingest, params, WebEdit.model_validate(params.item))
        if params.kind == "revoke":
            return await _revoke(ingest, params, WebRevoke.model_validate(params.item))
    except ValidationError as err:
        return await _keep(ingest, params, f"invalid: {err.error_count()} problem(s): {err}"[:500])
    return await _keep(ingest, params, "unknown kind")


async def _message(
    ingest: Ingest, params: WhatsAppWebInboundParams, msg: WebMessage
) -> dict[str, Any]:
    phone = _phone(msg.phone) or _phone(msg.chat)
    identity: Identity = "phone"
    address = phone
    if address is None:
        # A privacy id (LID) WhatsApp did not map to a number: the lead is found by it.
        identity, address = "wa_user", f"lid:{msg.chat}"
    text, meta = _text(msg)
    meta["account"] = params.account
    if msg.quoted is not None:
        mine = msg.quoted.participant is not None and msg.quoted.participant != msg.chat
        quoted_id = f"{'true' if mine else 'false'}_{msg.chat}_{msg.quoted.id}"
        quoted_id = (await _named(ingest, params.company_id, quoted_id, msg.phone))[0]
        meta["context"] = {"id": quoted_id, "from": msg.quoted.participant}
        meta["context_id"] = quoted_id
    route = await ingest.route_for(params.company_id)
    row = InboundRow(
        address=address,
        text=text,
        contact_name=msg.notifyName,
        provider_message_id=msg.id,
        received_at=_at(msg.t),
        meta=meta,
    )
    (accepted,) = await ingest.inbound.file(route, identity=identity, channel=CHANNEL, rows=[row])
    outcome = "duplicate" if not accepted.created else "optout" if accepted.optout else "filed"
    WEBHOOK_ITEMS.labels(CHANNEL, f"message.{msg.type}"[:40], outcome).inc()
    return {
        "status": outcome,
        "message_id": str(accepted.message_id),
        "lead_id": str(accepted.lead_id),
    }


async def _reaction(
    ingest: Ingest, params: WhatsAppWebInboundParams, reaction: WebReaction
) -> dict[str, Any]:
    phone = _phone(reaction.phone) or _phone(reaction.sender)
    sender = Sender(phone=phone, user_id=None if phone else reaction.sender)
    item = Reaction(
        where=NOWHERE,
        wamid=reaction.id,
        sender=sender,
        target_wamid=(
            await _named(
                ingest, params.company_id, reaction.msgId, reaction.chatPhone or reaction.phone
            )
        )[0],
        emoji=reaction.emoji or None,
        at=_at(reaction.t),
    )
    async with ingest.plat.bus.unit(acquire_timeout=5) as unit:
        changed = await apply_reaction(unit.conn, params.company_id, item, CHANNEL)
    WEBHOOK_ITEMS.labels(CHANNEL, "reaction", changed.outcome).inc()
    return {"status": changed.outcome}


async def _edit(ingest: Ingest, params: WhatsAppWebInboundParams, edit: WebEdit) -> dict[str, Any]:
    if edit.body is None:
        return await _keep(ingest, params, "an edit without text")
    item = Edit(
        where=NOWHERE,
        wamid=edit.editId or f"{edit.id}:edit:{edit.t}",
        sender=Sender(phone=_phone(edit.phone) or _phone(edit.chat), user_id=None),
        original_wamid=(await _named(ingest, params.company_id, edit.id, edit.phone))[0],
        text=edit.body,
        meta={},
        at=_at(edit.t),
    )
    async with ingest.plat.bus.unit(acquire_timeout=5) as unit:
        changed = await apply_edit(unit.conn, params.company_id, item, CHANNEL)
        answered = await answer_edit(unit, params.company_id, changed)
    WEBHOOK_ITEMS.labels(CHANNEL, "edit", changed.outcome).inc()
    return {"status": changed.outcome, "answered": answered}


async def _revoke(
    ingest: Ingest, params: WhatsAppWebInboundParams, revoke: WebRevoke
) -> dict[str, Any]:
    item = Revoke(
        where=NOWHERE,
        wamid=revoke.id or f"revoke:{revoke.refId}",
        sender=Sender(phone=_phone(revoke.from_), user_id=None),
        original_wamid=(await _named(ingest, params.company_id, revoke.refId, revoke.phone))[0],
        at=None,
    )
    async with ingest.plat.bus.unit(acquire_timeout=5) as unit:
        changed = await apply_revoke(unit.conn, params.company_id, item, CHANNEL)
    WEBHOOK_ITEMS.labels(CHANNEL, "revoke", changed.outcome).inc()
    return {"status": changed.outcome}


async def _ack(ingest: Ingest, params: WhatsAppWebInboundParams, ack: WebAck) -> dict[str, Any]:
    status = ACK_STATUS.get(ack.ack)
    if status is None or not any(i.startswith("true_") for i in ack.ids):
        return {"status": "ignored"}
    mine = [
        pid
        for i in ack.ids
        if i.startswith("true_")
        for pid in await _named(ingest, params.company_id, i, ack.phone)
    ]
    now = datetime.now(UTC)
    reports = [
        StatusReport(
            provider_message_id=pid,
            status=status,
            status_at=now,
            recipient=ack.chat,
            errors=[],
            error_text="WhatsApp Web: the message failed" if status == "failed" else None,
        )
        for pid in mine
    ]
    async with ingest.plat.bus.unit(acquire_timeout=5) as unit:
        outcome = await apply_statuses(unit.conn, CHANNEL, reports)
    confirmed = 0
    if status != "failed":
        confirmed = await _confirm_unknown(ingest, params.company_id, mine)
    WEBHOOK_ITEMS.labels(CHANNEL, "status", "applied").inc(outcome.new)
    return {"status": "applied", "new": outcome.new, "confirmed": confirmed}


async def _confirm_unknown(ingest: Ingest, company_id: uuid.UUID, ids: list[str]) -> int:
    """A send recorded 'unknown' (no acknowledgement in time) that WhatsApp now acknowledges
    did leave: it becomes 'sent' (the bus's one allowed move out of 'unknown')."""
    rows = await ingest.plat.pool.fetch(
        "SELECT id, attempts, provider_message_id FROM messages WHERE company_id = $1"
        " AND channel = $2 AND direction = 'outbound' AND status = 'unknown'"
        " AND provider_message_id = ANY($3::text[])",
        company_id,
        CHANNEL,
        ids,
    )
    ledger = SendLedger(ingest.plat.pool)
    confirmed = 0
    for row in rows:
        if await ledger.record_sent(
            row["id"],
            row["attempts"],
            status="sent",
            provider_message_id=row["provider_message_id"],
            meta={"late_confirmation": True},
        ):
            confirmed += 1
            log.info("whatsapp_web_unknown_confirmed", message_id=str(row["id"]))
    return confirmed
