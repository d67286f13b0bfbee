"""The WhatsApp Cloud API webhook payload (Meta's `messages` field), parsed leniently.

Meta sends `{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages",
"value": {...}}]}]}`, where a value carries `metadata.phone_number_id` (which business number),
`contacts[]` (`wa_id`, `profile.name`), `messages[]` (inbound, by type) and `statuses[]` (sent,
delivered, read, failed with `errors[]`) of messages the business sent. Unknown fields and
message types are ignored rather than refused: refusing makes Meta retry the batch for days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DELIVERY_STATUSES = frozenset({"sent", "delivered", "read", "failed"})
MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
# Types that are not something the contact said to us: nothing to file or answer.
SKIPPED_TYPES = frozenset({"reaction", "system", "unsupported", "unknown", "ephemeral"})


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Profile(_Lenient):
    name: str | None = None


class Contact(_Lenient):
    wa_id: str | None = None
    profile: Profile | None = None


class Text(_Lenient):
    body: str = ""


class Media(_Lenient):
    id: str | None = None
    caption: str | None = None
    mime_type: str | None = None
    filename: str | None = None


class Reply(_Lenient):
    id: str | None = None
    title: str | None = None
    description: str | None = None


class Interactive(_Lenient):
    type: str | None = None
    button_reply: Reply | None = None
    list_reply: Reply | None = None


class Button(_Lenient):
    text: str | None = None
    payload: str | None = None


class Location(_Lenient):
    latitude: float | None = None
    longitude: float | None = None
    name: str | None = None
    address: str | None = None


class Context(_Lenient):
    id: str | None = None


class WaMessage(_Lenient):
    sender: str = Field(alias="from")
    id: str
    timestamp: str | None = None
    type: str = "text"
    text: Text | None = None
    image: Media | None = None
    video: Media | None = None
    audio: Media | None = None
    document: Media | None = None
    sticker: Media | None = None
    interactive: Interactive | None = None
    button: Button | None = None
    location: Location | None = None
    context: Context | None = None


class ErrorData(_Lenient):
    details: str | None = None


class WaError(_Lenient):
    code: int | None = None
    title: str | None = None
    message: str | None = None
    error_data: ErrorData | None = None


class WaStatus(_Lenient):
    id: str
    status: str
    timestamp: str | None = None
    recipient_id: str | None = None
    errors: list[WaError] = Field(default_factory=list)


class Metadata(_Lenient):
    display_phone_number: str | None = None
    phone_number_id: str | None = None


class Value(_Lenient):
    messaging_product: str | None = None
    metadata: Metadata | None = None
    contacts: list[Contact] = Field(default_factory=list)
    messages: list[WaMessage] = Field(default_factory=list)
    statuses: list[WaStatus] = Field(default_factory=list)


class Change(_Lenient):
    field: str | None = None
    value: Value | None = None


class Entry(_Lenient):
    id: str | None = None
    changes: list[Change] = Field(default_factory=list)


class MetaWebhook(_Lenient):
    object: str | None = None
    entry: list[Entry] = Field(default_factory=list)


def unix_time(value: str | None) -> datetime | None:
    """Meta's timestamps are Unix seconds as strings."""
    if not value:
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError, OSError):
        return None


def message_text(message: WaMessage) -> str | None:
    """What the contact said, as text for the CRM and the AI; None for types not to be filed."""
    kind = message.type
    if kind in SKIPPED_TYPES:
        return None
    if kind == "text":
        return message.text.body if message.text and message.text.body.strip() else None
    if kind == "button" and message.button is not None:
        return message.button.text or message.button.payload or "[button]"
    if kind == "interactive" and message.interactive is not None:
        reply = message.interactive.button_reply or message.interactive.list_reply
        if reply is not None and reply.title:
            return reply.title
        return "[interactive reply]"
    if kind in MEDIA_TYPES:
        media: Media | None = getattr(message, kind)
        if media is not None and media.caption:
            return media.caption
        return f"[{kind}]"
    if kind == "location" and message.location is not None:
        loc = message.location
        parts = [p for p in (loc.name, loc.address) if p]
        if loc.latitude is not None and loc.longitude is not None:
            parts.append(f"{loc.latitude},{loc.longitude}")
        return "[location: " + "; ".join(parts) + "]" if parts else "[location]"
    return f"[{kind}]"


def message_meta(message: WaMessage, phone_number_id: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"type": message.type, "wa_id": message.sender}
    if phone_number_id:
        meta["phone_number_id"] = phone_number_id
    if message.context is not None and message.context.id:
        meta["context_id"] = message.context.id
    if message.type in MEDIA_TYPES:
        media: Media | None = getattr(message, message.type)
        if media is not None and media.id:
            meta["media_id"] = media.id
            meta["mime_type"] = media.mime_type
    return meta


@dataclass(frozen=True)
class StatusReport:
    """One delivery status of an outbound message, as stored."""

    provider_message_id: str
    status: str
    status_at: datetime
    recipient: str | None
    errors: list[dict[str, Any]]
    error_text: str | None


def status_report(status: WaStatus, received_at: datetime) -> StatusReport | None:
    """None for statuses that are not delivery states (e.g. 'deleted', 'warning')."""
    if status.status not in DELIVERY_STATUSES:
        return None
    errors = [e.model_dump(exclude_none=True) for e in status.errors]
    error_text = None
    if status.status == "failed":
        error_text = "; ".join(_describe(e) for e in status.errors) or "failed (no error given)"
    return StatusReport(
        provider_message_id=status.id,
        status=status.status,
        status_at=unix_time(status.timestamp) or received_at,
        recipient=status.recipient_id,
        errors=errors,
        error_text=error_text,
    )


def _describe(error: WaError) -> str:
    text = f"{error.code}: {error.title or error.message or 'error'}"
    if error.error_data is not None and error.error_data.details:
        text += f" ({error.error_data.details})"
    return text[:1000]
