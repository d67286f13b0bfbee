"""One parser for every kind of WhatsApp Cloud notification: raw JSON in, typed items out.

Each message, status, preference and account update is read on its own; one that cannot be
read becomes an `Invalid` item (kept, with the reason) and the rest of the batch goes on. What
Meta documents becomes:

- `Inbound`: a message to file (text, media, location, contacts, interactive button/list/flow
  replies, template quick replies, orders, `request_welcome`, unsupported). Its `text` is what
  the CRM and the AI read; structured content (button payloads, list row ids, flow answers,
  order lines, contact cards, coordinates, the ad referral, media ids) is kept in `meta`.
- `Edit`, `Revoke`, `Reaction`: changes to a message already filed; never messages of their own.
- `IdentityChange`: `user_changed_number`, `user_changed_user_id` (system messages) and the
  `user_id_update` field.
- `PreferenceChange`: `user_preferences` (marketing stop / resume).
- `TemplateEvent`: `message_template_status_update` and `message_template_quality_update`.
- `StatusReport` for `statuses[]`; `Recorded` for what is kept but not acted on (webhook
  `errors[]`, account fields, unknown future types and fields).

Senders are phone numbers (`from`, `wa_id`) and/or business-scoped user ids (`from_user_id`,
`user_id`); either is enough to file a message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from shvya_common.whatsapp.ids import is_bsuid
from shvya_ingest.meta_payload import (
    Contact,
    Media,
    Preference,
    StatusReport,
    TemplateUpdate,
    UserIdUpdate,
    WaMessage,
    WaStatus,
    describe_error,
    status_report,
    unix_time,
)
from shvya_ingest.phone import AddressError, normalise_phone

RAW_CHARS = 4000
# Message types filed as inbound messages (with a readable text).
FILED_TYPES = frozenset(
    {
        "text",
        "image",
        "video",
        "audio",
        "voice",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "button",
        "order",
        "request_welcome",
        "unsupported",
        "unknown",
    }
)
# Fields of the WhatsApp Business Account webhook a business may subscribe to and that carry no
# message: kept as events for operators.
ACCOUNT_FIELDS = frozenset(
    {
        "account_update",
        "account_alerts",
        "account_review_update",
        "business_capability_update",
        "phone_number_name_update",
        "phone_number_quality_update",
        "security",
        "template_category_update",
        "message_template_components_update",
        "business_status_update",
    }
)


@dataclass(frozen=True)
class Sender:
    """Who wrote: a phone number (E.164), a business-scoped user id, or both."""

    phone: str | None
    user_id: str | None
    parent_user_id: str | None = None
    username: str | None = None
    name: str | None = None

    @property
    def address(self) -> str:
        """How the lead is found and answered: the phone number when known, else the BSUID."""
        return self.phone or self.user_id or ""


@dataclass(frozen=True)
class Where:
    """Which business number (and account) a notification is for."""

    phone_number_id: str | None
    waba_id: str | None


@dataclass(frozen=True)
class MediaRef:
    media_id: str
    kind: str
    mime_type: str | None
    sha256: str | None
    filename: str | None


@dataclass(frozen=True)
class Inbound:
    where: Where
    wamid: str
    sender: Sender
    kind: str
    text: str
    meta: dict[str, Any]
    sent_at: datetime | None
    media: MediaRef | None = None
    referral: dict[str, Any] | None = None


@dataclass(frozen=True)
class Edit:
    where: Where
    wamid: str
    sender: Sender
    original_wamid: str
    text: str
    meta: dict[str, Any]
    at: datetime | None


@dataclass(frozen=True)
class Revoke:
    where: Where
    wamid: str
    sender: Sender
    original_wamid: str
    at: datetime | None


@dataclass(frozen=True)
class Reaction:
    where: Where
    wamid: str
    sender: Sender
    target_wamid: str
    emoji: str | None
    at: datetime | None


@dataclass(frozen=True)
class IdentityChange:
    where: Where
    kind: str
    old_phone: str | None
    new_phone: str | None
    old_user_id: str | None
    new_user_id: str | None
    new_parent_user_id: str | None
    name: str | None
    at: datetime | None


@dataclass(frozen=True)
class PreferenceChange:
    where: Where
    sender: Sender
    category: str
    value: str
    detail: str | None
    at: datetime | None


@dataclass(frozen=True)
class TemplateEvent:
    where: Where
    field: str
    event: str | None
    template_id: str | None
    name: str | None
    language: str | None
    reason: str | None
    category: str | None
    quality: str | None


@dataclass(frozen=True)
class Status:
    where: Where
    report: StatusReport


@dataclass(frozen=True)
class Recorded:
    """Kept as an event, not acted on: webhook errors, account fields, unknown kinds."""

    where: Where
    kind: str
    reason: str
    raw: Any


@dataclass(frozen=True)
class Invalid:
    """An object that could not be read; kept with the reason."""

    where: Where
    kind: str
    reason: str
    raw: Any


Item = (
    Inbound
    | Edit
    | Revoke
    | Reaction
    | IdentityChange
    | PreferenceChange
    | TemplateEvent
    | Status
    | Recorded
    | Invalid
)


@dataclass
class Parsed:
    items: list[Item] = field(default_factory=list)

    def of(self, kind: type[Any]) -> list[Any]:
        return [i for i in self.items if isinstance(i, kind)]


def clip_raw(raw: Any) -> Any:
    """A raw object small enough to keep in an event."""
    text = json.dumps(raw, default=str, ensure_ascii=False)
    return raw if len(text) <= RAW_CHARS else {"truncated": text[:RAW_CHARS]}


def _phone(digits: str | None) -> str | None:
    if not digits:
        return None
    try:
        return normalise_phone("+" + digits.strip().lstrip("+"))
    except AddressError:
        return None


def _why(err: ValidationError) -> str:
    errors = err.errors()
    if not errors:
        return "invalid"
    where = ".".join(str(p) for p in errors[0].get("loc", ()))
    return f"{where or 'object'}: {errors[0].get('msg', 'invalid')}"[:300]


def _unreadable(err: Exception) -> str:
    """Why an object could not be read: a model's first complaint, or the error itself (a shape
    no model foresaw, e.g. a number where a list belongs)."""
    if isinstance(err, ValidationError):
        return _why(err)
    if isinstance(err, ValueError):
        return str(err)[:300]
    return f"unreadable: {type(err).__name__}: {err}"[:300]


def _model(cls: type[BaseModel], raw: Any) -> BaseModel:
    if not isinstance(raw, dict):
        raise ValueError(f"expected an object, got {type(raw).__name__}")
    return cls.model_validate(raw)


def parse_notification(payload: Any, received_at: datetime) -> Parsed:
    """Every item of a notification; never raises for content, only for a non-object root."""
    parsed = Parsed()
    entries = payload.get("entry") if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            parsed.items.append(Invalid(Where(None, None), "entry", "not an object", entry))
            continue
        waba_id = str(entry["id"]) if entry.get("id") is not None else None
        changes = entry.get("changes")
        for change in changes if isinstance(changes, list) else []:
            _parse_change(parsed, change, waba_id, received_at)
    return parsed


def _parse_change(parsed: Parsed, change: Any, waba_id: str | None, now: datetime) -> None:
    if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
        parsed.items.append(Invalid(Where(None, waba_id), "change", "no value object", change))
        return
    value: dict[str, Any] = change["value"]
    fieldname = str(change.get("field") or "messages")
    metadata = value.get("metadata")
    number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    where = Where(str(number) if number else None, waba_id)
    if fieldname in ("message_template_status_update", "message_template_quality_update"):
        parsed.items.append(_guarded(where, fieldname, value, _template_event, fieldname))
        return
    if fieldname in ACCOUNT_FIELDS:
        parsed.items.append(Recorded(where, fieldname, "account notification", clip_raw(value)))
        return
    if fieldname not in ("messages", "user_preferences", "user_id_update"):
        parsed.items.append(Recorded(where, fieldname, "field not handled", clip_raw(value)))
        return
    contacts = _contacts(parsed, where, value.get("contacts"))
    # Each item is read on its own, and whatever goes wrong reading it (a model's refusal, or a
    # shape nothing foresaw) makes that one item Invalid, never the batch.
    for raw in _list(value.get("messages")):
        try:
            message = _model(WaMessage, raw)
            assert isinstance(message, WaMessage)
            parsed.items.append(_message(where, message, contacts, raw))
        except Exception as err:
            parsed.items.append(Invalid(where, "message", _unreadable(err), clip_raw(raw)))
    for raw in _list(value.get("statuses")):
        try:
            status = _model(WaStatus, raw)
            assert isinstance(status, WaStatus)
            report = status_report(status, now)
        except Exception as err:
            parsed.items.append(Invalid(where, "status", _unreadable(err), clip_raw(raw)))
            continue
        if report is None:
            parsed.items.append(
                Recorded(where, "status", f"status {status.status!r} is not a delivery state", raw)
            )
        else:
            parsed.items.append(Status(where, report))
    for raw in _list(value.get("errors")):
        reason = "webhook error"
        if isinstance(raw, dict):
            reason = f"{raw.get('code')}: {raw.get('title') or raw.get('message') or 'error'}"
        parsed.items.append(Recorded(where, "error", reason[:300], clip_raw(raw)))
    for raw in _list(value.get("user_preferences")):
        parsed.items.append(_guarded(where, "user_preferences", raw, _preference, contacts))
    if "user_id_update" in value:
        raw = value["user_id_update"]
        parsed.items.append(_guarded(where, "user_id_update", raw, _user_id_update))


def _guarded(where: Where, kind: str, raw: Any, read: Callable[..., Item], *args: Any) -> Item:
    """`read(where, raw, *args)`, or the item Invalid when reading it fails in any way."""
    try:
        return read(where, raw, *args)
    except Exception as err:
        return Invalid(where, kind, _unreadable(err), clip_raw(raw))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class _Contacts:
    """Webhook contacts by phone digits and by BSUID, to name a message's sender."""

    def __init__(self) -> None:
        self.by_key: dict[str, Contact] = {}

    def add(self, contact: Contact) -> None:
        for key in (contact.wa_id, contact.user_id):
            if key:
                self.by_key[key] = contact

    def find(self, *keys: str | None) -> Contact | None:
        for key in keys:
            if key and key in self.by_key:
                return self.by_key[key]
        return None


def _contacts(parsed: Parsed, where: Where, raw: Any) -> _Contacts:
    found = _Contacts()
    for item in _list(raw):
        try:
            contact = _model(Contact, item)
            assert isinstance(contact, Contact)
            found.add(contact)
        except Exception:
            parsed.items.append(Invalid(where, "contact", "unreadable contact", clip_raw(item)))
    return found


def _sender(
    digits: str | None, user_id: str | None, parent: str | None, contacts: _Contacts
) -> Sender:
    contact = contacts.find(user_id, digits)
    if contact is not None:
        digits = digits or contact.wa_id
        user_id = user_id or contact.user_id
        parent = parent or contact.parent_user_id
    profile = contact.profile if contact is not None else None
    return Sender(
        phone=_phone(digits),
        user_id=user_id if is_bsuid(user_id) else None,
        parent_user_id=parent if is_bsuid(parent) else None,
        username=profile.username if profile is not None else None,
        name=profile.name if profile is not None else None,
    )


def _message(where: Where, msg: WaMessage, contacts: _Contacts, raw: Any) -> Item:
    sender = _sender(msg.sender, msg.from_user_id, msg.from_parent_user_id, contacts)
    at = unix_time(msg.timestamp)
    kind = msg.type
    if kind == "system":
        return _system(where, msg, sender, at, raw)
    if not sender.address:
        return Invalid(where, "message", "no sender phone number or user id", clip_raw(raw))
    if kind == "reaction" and msg.reaction is not None and msg.reaction.message_id:
        emoji = msg.reaction.emoji or None
        return Reaction(where, msg.id, sender, msg.reaction.message_id, emoji, at)
    if kind == "edit" and msg.edit is not None and msg.edit.original_message_id:
        try:
            inner = WaMessage.model_validate({"id": msg.id, "type": "text", **msg.edit.message})
        except ValidationError as err:
            return Invalid(where, "edit", _why(err), clip_raw(raw))
        text, meta, _ = describe(inner)
        return Edit(where, msg.id, sender, msg.edit.original_message_id, text, meta, at)
    if kind == "revoke" and msg.revoke is not None and msg.revoke.original_message_id:
        return Revoke(where, msg.id, sender, msg.revoke.original_message_id, at)
    if kind not in FILED_TYPES:
        return Recorded(where, f"message.{kind}", "message type not handled", clip_raw(raw))
    text, meta, media = describe(msg)
    if not text.strip():
        return Recorded(where, f"message.{kind}", "message without content", clip_raw(raw))
    meta["type"] = kind
    if sender.phone:
        meta["wa_id"] = sender.phone.removeprefix("+")
    if sender.user_id:
        meta["user_id"] = sender.user_id
    if sender.username:
        meta["username"] = sender.username
    if where.phone_number_id:
        meta["phone_number_id"] = where.phone_number_id
    if msg.group_id:
        meta["group_id"] = msg.group_id
    if msg.context is not None:
        context = msg.context.model_dump(exclude_none=True, by_alias=True)
        if context:
            meta["context"] = context
            if msg.context.id:
                meta["context_id"] = msg.context.id
    referral = msg.referral.model_dump(exclude_none=True) if msg.referral else None
    if referral:
        meta["referral"] = referral
    if msg.errors:
        meta["errors"] = [e.model_dump(exclude_none=True) for e in msg.errors]
    return Inbound(where, msg.id, sender, kind, text, meta, at, media, referral or None)


def _system(where: Where, msg: WaMessage, sender: Sender, at: datetime | None, raw: Any) -> Item:
    system = msg.system
    kind = system.type if system is not None and system.type else "system"
    if system is None or kind not in ("user_changed_number", "user_changed_user_id"):
        return Recorded(where, f"system.{kind}", "system message not acted on", clip_raw(raw))
    new_phone = _phone(system.wa_id) if kind == "user_changed_number" else None
    old_user, new_user = sender.user_id, system.user_id
    if kind == "user_changed_user_id" and system.body and " changed from " in system.body:
        # "User <name> changed from <old BSUID> to <new BSUID>"
        tail = system.body.rsplit(" changed from ", 1)[1].split(" to ")
        if len(tail) == 2:
            old_user = old_user or tail[0].strip()
            new_user = new_user or tail[1].strip()
    name = sender.name
    if not name and system.body and system.body.startswith("User ") and " changed " in system.body:
        name = system.body[5 : system.body.index(" changed ")].strip() or None
    return IdentityChange(
        where,
        kind,
        old_phone=sender.phone,
        new_phone=new_phone,
        old_user_id=old_user if is_bsuid(old_user) else None,
        new_user_id=new_user if is_bsuid(new_user) else None,
        new_parent_user_id=system.parent_user_id if is_bsuid(system.parent_user_id) else None,
        name=name,
        at=at,
    )


def _preference(where: Where, raw: Any, contacts: _Contacts) -> Item:
    try:
        pref = _model(Preference, raw)
    except (ValidationError, ValueError):
        return Invalid(where, "user_preferences", "unreadable preference", clip_raw(raw))
    assert isinstance(pref, Preference)
    sender = _sender(pref.wa_id, pref.user_id, None, contacts)
    if not sender.address or not pref.value:
        return Invalid(where, "user_preferences", "no user or no value", clip_raw(raw))
    return PreferenceChange(
        where,
        sender,
        (pref.category or "").lower(),
        pref.value.lower(),
        pref.detail,
        unix_time(pref.timestamp),
    )


def _user_id_update(where: Where, raw: Any) -> Item:
    try:
        update = _model(UserIdUpdate, raw)
    except (ValidationError, ValueError):
        return Invalid(where, "user_id_update", "unreadable user_id_update", clip_raw(raw))
    assert isinstance(update, UserIdUpdate)
    ids = update.user_id
    if ids is None or not is_bsuid(ids.current):
        return Invalid(where, "user_id_update", "no current user id", clip_raw(raw))
    parent = update.parent_user_id.current if update.parent_user_id else None
    phone = _phone(update.wa_id)
    return IdentityChange(
        where,
        "user_id_update",
        old_phone=phone,
        new_phone=None,
        old_user_id=ids.previous if is_bsuid(ids.previous) else None,
        new_user_id=ids.current,
        new_parent_user_id=parent if is_bsuid(parent) else None,
        name=None,
        at=unix_time(update.timestamp),
    )


def _template_event(where: Where, value: dict[str, Any], fieldname: str) -> Item:
    try:
        update = _model(TemplateUpdate, value)
    except (ValidationError, ValueError):
        return Invalid(where, fieldname, "unreadable template update", clip_raw(value))
    assert isinstance(update, TemplateUpdate)
    template_id = update.message_template_id
    return TemplateEvent(
        where,
        fieldname,
        event=update.event,
        template_id=str(template_id) if template_id is not None else None,
        name=update.message_template_name,
        language=update.message_template_language,
        reason=update.reason,
        category=update.message_template_category,
        quality=update.new_quality_score,
    )


# --- what a message says, for the CRM and the AI ---

_MEDIA_WORDS = {
    "image": "Image",
    "video": "Video",
    "audio": "Audio message",
    "voice": "Voice message",
    "document": "Document",
    "sticker": "Sticker",
}


def describe(msg: WaMessage) -> tuple[str, dict[str, Any], MediaRef | None]:
    """(readable text, structured meta, media to download) for one message's content."""
    kind = msg.type
    meta: dict[str, Any] = {}
    if kind == "text":
        return (msg.text.body if msg.text else ""), meta, None
    if kind in _MEDIA_WORDS:
        media: Media | None = getattr(msg, kind)
        if media is None:
            return f"[{_MEDIA_WORDS[kind]}]", meta, None
        if kind == "audio" and media.voice:
            kind = "voice"
        ref = None
        if media.id:
            ref = MediaRef(media.id, kind, media.mime_type, media.sha256, media.filename)
        meta["media"] = media.model_dump(exclude_none=True) | {"kind": kind}
        what = _MEDIA_WORDS[kind]
        details = [d for d in (media.filename, media.mime_type) if d]
        label = f"[{what} attached" + (f": {', '.join(details)}" if details else "") + "]"
        return (f"{label} {media.caption}" if media.caption else label), meta, ref
    if kind == "location" and msg.location is not None:
        loc = msg.location
        meta["location"] = loc.model_dump(exclude_none=True)
        parts = [p for p in (loc.name, loc.address) if p]
        if loc.latitude is not None and loc.longitude is not None:
            parts.append(f"{loc.latitude}, {loc.longitude}")
        return "[Location shared: " + ("; ".join(parts) or "no details") + "]", meta, None
    if kind == "contacts":
        meta["contacts"] = msg.contacts
        return "[Contact card: " + "; ".join(_card(c) for c in msg.contacts) + "]", meta, None
    if kind == "interactive" and msg.interactive is not None:
        return _interactive(msg, meta)
    if kind == "button" and msg.button is not None:
        meta["button"] = msg.button.model_dump(exclude_none=True)
        return msg.button.text or msg.button.payload or "[Button pressed]", meta, None
    if kind == "order" and msg.order is not None:
        order = msg.order
        meta["order"] = order.model_dump(exclude_none=True)
        lines = [
            f"{i.quantity} × {i.product_retailer_id} ({i.item_price} {i.currency})"
            for i in order.product_items
        ]
        text = "[Order from catalog: " + ("; ".join(lines) or "no items") + "]"
        return (f"{text} {order.text}" if order.text else text), meta, None
    if kind == "request_welcome":
        return "[The customer opened the chat for the first time]", meta, None
    if kind in ("unsupported", "unknown"):
        detail = "; ".join(describe_error(e) for e in msg.errors)
        return (
            (
                "[The customer sent a message WhatsApp does not support"
                + (f": {detail}" if detail else "")
                + "]"
            ),
            meta,
            None,
        )
    return "", meta, None


def _card(card: dict[str, Any]) -> str:
    """A contact card's name, phones and emails; a part of another shape than Meta documents
    (`"phones": 5`, `"emails": true`) is left out, the rest of the card still read."""
    raw_name = card.get("name")
    name: dict[str, Any] = raw_name if isinstance(raw_name, dict) else {}
    label = str(name.get("formatted_name") or name.get("first_name") or "contact")
    phones = [
        str(p.get("phone") or p.get("wa_id"))
        for p in _list(card.get("phones"))
        if isinstance(p, dict) and (p.get("phone") or p.get("wa_id"))
    ]
    emails = [
        str(e["email"]) for e in _list(card.get("emails")) if isinstance(e, dict) and e.get("email")
    ]
    return ", ".join([label, *phones, *emails])


def _interactive(msg: WaMessage, meta: dict[str, Any]) -> tuple[str, dict[str, Any], None]:
    reply = msg.interactive
    assert reply is not None
    kind = reply.type or ""
    if kind in ("button_reply", "list_reply"):
        choice = reply.button_reply if kind == "button_reply" else reply.list_reply
        if choice is not None:
            meta["interactive"] = {"type": kind, **choice.model_dump(exclude_none=True)}
            text = choice.title or choice.id or "[Option chosen]"
            if choice.description:
                text += f" ({choice.description})"
            return text, meta, None
    if kind == "nfm_reply" and reply.nfm_reply is not None:
        flow = reply.nfm_reply
        answers: Any = flow.response_json
        if isinstance(answers, str):
            try:
                answers = json.loads(answers)
            except ValueError:
                answers = {"raw": answers}
        meta["interactive"] = {
            "type": kind,
            "name": flow.name,
            "body": flow.body,
            "response": answers,
        }
        fields = (
            "; ".join(f"{k}: {v}" for k, v in answers.items() if k != "flow_token")
            if isinstance(answers, dict)
            else ""
        )
        title = flow.name or "flow"
        return f"[Form submitted ({title})" + (f": {fields}" if fields else "") + "]", meta, None
    meta["interactive"] = reply.model_dump(exclude_none=True)
    return "[Interactive reply]", meta, None
