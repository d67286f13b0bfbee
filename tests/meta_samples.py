"""WhatsApp Cloud webhook payloads in the shapes Meta's webhook reference documents, one builder
per kind: the `messages` field (every message type, statuses, errors), `user_preferences`,
`user_id_update` and `message_template_status_update`. Values follow Meta's examples."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
TS = 1749416383
BSUID = "US.13491208655302741918"
PARENT_BSUID = "US.ENT.11815799212886844830"


def envelope(
    value: dict[str, Any], field: str = "messages", phone_number_id: str = PHONE_NUMBER_ID
) -> dict[str, Any]:
    body = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
        **value,
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"value": body, "field": field}]}],
    }


def messages(
    items: Iterable[dict[str, Any]],
    contacts: Iterable[dict[str, Any]] = (),
    phone_number_id: str = PHONE_NUMBER_ID,
) -> dict[str, Any]:
    value: dict[str, Any] = {"messages": list(items)}
    if contacts:
        value["contacts"] = list(contacts)
    return envelope(value, phone_number_id=phone_number_id)


def contact(wa_id: str | None, name: str, user_id: str | None = None, **profile: str) -> dict:
    found: dict[str, Any] = {"profile": {"name": name, **profile}}
    if wa_id:
        found["wa_id"] = wa_id
    if user_id:
        found["user_id"] = user_id
    return found


def base(wamid: str, sender: str | None, kind: str, ts: int = TS, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"id": wamid, "timestamp": str(ts), "type": kind, **extra}
    if sender is not None:
        message["from"] = sender
    return message


def text(wamid: str, sender: str | None, body: str, **extra: Any) -> dict[str, Any]:
    return base(wamid, sender, "text", text={"body": body}, **extra)


def image(wamid: str, sender: str, media_id: str, caption: str | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {
        "mime_type": "image/jpeg",
        "sha256": "HxU7TtWi3Y1aZJvPJlW1cMiyN3zR/1GhwfpDFNGQTjY=",
        "id": media_id,
    }
    if caption:
        media["caption"] = caption
    return base(wamid, sender, "image", image=media)


def voice(wamid: str, sender: str, media_id: str) -> dict[str, Any]:
    audio = {"mime_type": "audio/ogg; codecs=opus", "sha256": "abc=", "id": media_id, "voice": True}
    return base(wamid, sender, "audio", audio=audio)


def document(wamid: str, sender: str, media_id: str) -> dict[str, Any]:
    doc = {
        "caption": "Our signed offer",
        "filename": "offer.pdf",
        "mime_type": "application/pdf",
        "sha256": "c2ha=",
        "id": media_id,
    }
    return base(wamid, sender, "document", document=doc)


def sticker(wamid: str, sender: str, media_id: str) -> dict[str, Any]:
    media = {"mime_type": "image/webp", "sha256": "c3Q=", "id": media_id, "animated": False}
    return base(wamid, sender, "sticker", sticker=media)


def video(wamid: str, sender: str, media_id: str) -> dict[str, Any]:
    media = {"caption": "unboxing", "mime_type": "video/mp4", "sha256": "dmk=", "id": media_id}
    return base(wamid, sender, "video", video=media)


def location(wamid: str, sender: str) -> dict[str, Any]:
    place = {
        "address": "1 Hacker Way, Menlo Park, CA 94025",
        "latitude": 37.483307,
        "longitude": -122.148981,
        "name": "Meta Headquarters",
        "url": "https://meta.com",
    }
    return base(wamid, sender, "location", location=place)


def contacts_card(wamid: str, sender: str) -> dict[str, Any]:
    card = {
        "addresses": [{"city": "Menlo Park", "country": "United States", "type": "WORK"}],
        "birthday": "1999-01-23",
        "emails": [{"email": "bjohnson@example.com", "type": "WORK"}],
        "name": {"formatted_name": "Barbara J. Johnson", "first_name": "Barbara"},
        "org": {"company": "Example, Inc."},
        "phones": [{"phone": "+1 (650) 555-1234", "wa_id": "16505551234", "type": "WORK"}],
        "urls": [{"url": "https://www.example.com", "type": "WORK"}],
    }
    return base(wamid, sender, "contacts", contacts=[card])


def button_reply(wamid: str, sender: str, context_id: str) -> dict[str, Any]:
    reply = {"type": "button_reply", "button_reply": {"id": "plan-gold", "title": "Gold plan"}}
    return base(
        wamid,
        sender,
        "interactive",
        interactive=reply,
        context={"from": "15550783881", "id": context_id},
    )


def list_reply(wamid: str, sender: str) -> dict[str, Any]:
    reply = {
        "type": "list_reply",
        "list_reply": {"id": "slot-3", "title": "Thursday 10:00", "description": "In person"},
    }
    return base(wamid, sender, "interactive", interactive=reply)


def flow_reply(wamid: str, sender: str) -> dict[str, Any]:
    answers = {"flow_token": "FT-1", "budget": "5000", "city": "Pune"}
    reply = {
        "type": "nfm_reply",
        "nfm_reply": {"name": "flow", "body": "Sent", "response_json": json.dumps(answers)},
    }
    return base(wamid, sender, "interactive", interactive=reply)


def quick_reply(wamid: str, sender: str) -> dict[str, Any]:
    return base(
        wamid,
        sender,
        "button",
        button={"payload": "STOP_PROMOS", "text": "Stop promotions"},
        context={"from": "15550783881", "id": "wamid.template-out"},
    )


def order(wamid: str, sender: str) -> dict[str, Any]:
    cart = {
        "catalog_id": "194836987003835",
        "text": "Please deliver by Friday",
        "product_items": [
            {
                "product_retailer_id": "di9ozbzfi4",
                "quantity": 2,
                "item_price": 30,
                "currency": "USD",
            },
        ],
    }
    return base(wamid, sender, "order", order=cart)


def reaction(wamid: str, sender: str, target: str, emoji: str | None = "👍") -> dict[str, Any]:
    react: dict[str, Any] = {"message_id": target}
    if emoji is not None:
        react["emoji"] = emoji
    return base(wamid, sender, "reaction", reaction=react)


def edit(wamid: str, sender: str | None, original: str, body: str, **extra: Any) -> dict:
    return base(
        wamid,
        sender,
        "edit",
        edit={"original_message_id": original, "message": {"type": "text", "text": {"body": body}}},
        **extra,
    )


def revoke(wamid: str, sender: str, original: str) -> dict[str, Any]:
    return base(wamid, sender, "revoke", revoke={"original_message_id": original})


def number_changed(wamid: str, old: str, new: str, name: str = "Sheena") -> dict[str, Any]:
    system = {
        "body": f"User {name} changed from {old} to {new}",
        "wa_id": new,
        "type": "user_changed_number",
    }
    return base(wamid, old, "system", system=system)


def user_id_changed(wamid: str, old: str, new: str) -> dict[str, Any]:
    system = {
        "body": f"User Sheena changed from {old} to {new}",
        "user_id": new,
        "type": "user_changed_user_id",
    }
    return base(wamid, None, "system", from_user_id=old, system=system)


def request_welcome(wamid: str, sender: str) -> dict[str, Any]:
    return base(wamid, sender, "request_welcome")


def unsupported(wamid: str, sender: str) -> dict[str, Any]:
    errors = [
        {
            "code": 131051,
            "title": "Message type unknown",
            "message": "Message type unknown",
            "error_data": {"details": "Message type is currently not supported."},
        }
    ]
    return base(wamid, sender, "unsupported", errors=errors, unsupported={"type": "poll"})


def referral_text(wamid: str, sender: str, body: str) -> dict[str, Any]:
    ad = {
        "source_url": "https://fb.me/3cr4Wqqkx",
        "source_id": "120226305854810726",
        "source_type": "ad",
        "body": "Solar panels for your home",
        "headline": "Save 30% this month",
        "media_type": "image",
        "image_url": "https://scontent.xx.fbcdn.net/v/t45.1600-4/ad.jpg",
        "ctwa_clid": "Afc3nYt8Zc1RMmQ6l7xLJKrdh5gVpu",
    }
    return text(wamid, sender, body, referral=ad)


def future_kind(wamid: str, sender: str) -> dict[str, Any]:
    """A message type Meta may add one day: unknown to us."""
    return base(wamid, sender, "hologram", hologram={"id": "h1", "depth": 3})


def status(wamid: str, state: str, ts: int, recipient: str = "16505551234", **extra: Any) -> dict:
    return {"id": wamid, "status": state, "timestamp": str(ts), "recipient_id": recipient, **extra}


def failed(wamid: str, code: int, title: str, ts: int = TS + 60) -> dict[str, Any]:
    errors = [
        {
            "code": code,
            "title": title,
            "message": title,
            "error_data": {"details": title},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
        }
    ]
    return status(wamid, "failed", ts, errors=errors)


def statuses(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return envelope({"statuses": list(items)})


def webhook_errors() -> dict[str, Any]:
    errors = [
        {
            "code": 130429,
            "title": "Rate limit hit",
            "message": "Rate limit hit",
            "error_data": {"details": "Message failed to send because there were too many"},
        }
    ]
    return envelope({"errors": errors})


def preference(wa_id: str, value: str, name: str = "Sheena") -> dict[str, Any]:
    pref = {
        "wa_id": wa_id,
        "detail": f"User requested to {value} marketing messages",
        "category": "marketing_messages",
        "value": value,
        "timestamp": str(TS),
    }
    return envelope(
        {"contacts": [contact(wa_id, name)], "user_preferences": [pref]}, field="user_preferences"
    )


def user_id_update(wa_id: str | None, previous: str, current: str) -> dict[str, Any]:
    update: dict[str, Any] = {
        "detail": "The user's business-scoped user id changed",
        "timestamp": str(TS),
        "user_id": {"previous": previous, "current": current},
    }
    if wa_id:
        update["wa_id"] = wa_id
    return envelope({"user_id_update": update}, field="user_id_update")


def template_status(name: str, language: str, event: str, template_id: int = 1) -> dict:
    value = {
        "event": event,
        "message_template_id": template_id,
        "message_template_name": name,
        "message_template_language": language,
        "reason": "NONE" if event == "APPROVED" else "LOW_QUALITY",
        "message_template_category": "MARKETING",
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "time": TS,
                "changes": [{"value": value, "field": "message_template_status_update"}],
            }
        ],
    }
